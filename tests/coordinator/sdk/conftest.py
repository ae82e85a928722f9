"""Fixtures for SDK unit tests: the scripted in-process server, a silo connected to it and the injected clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coordinator.pki import ConsortiumPaths
from coordinator.sdk import Silo
from tests.coordinator.sdk.fakes import Clock, Server, connect, serving


@pytest.fixture
def server() -> Iterator[Server]:
    """A started scripted server on 127.0.0.1 port 0."""
    with serving() as started:
        yield started


@pytest.fixture
def clock() -> Clock:
    """Injected time and sleep."""
    return Clock()


@pytest.fixture
def silo(consortium: ConsortiumPaths, server: Server) -> Iterator[Silo]:
    """``silo-a`` of the test consortium, connected to the scripted server."""
    with connect(consortium, server) as client:
        yield client
