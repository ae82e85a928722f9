"""Fixtures for SDK unit tests: the scripted in-process server and the injected clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.coordinator.sdk.fakes import Clock, Server, serving


@pytest.fixture
def server() -> Iterator[Server]:
    """A started scripted server on 127.0.0.1 port 0."""
    with serving() as started:
        yield started


@pytest.fixture
def clock() -> Clock:
    """Injected time and sleep."""
    return Clock()
