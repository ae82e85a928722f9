"""coordinator.logs: stdlib log calls rendered by structlog as JSON lines or console text, at the chosen level."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from coordinator.logs import configure_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_json_lines_carry_the_extra_keys_and_respect_the_level() -> None:
    stream = io.StringIO()
    configure_logging(level="info", fmt="json", stream=stream)
    log = logging.getLogger("coordinator.rounds.driver")
    log.debug("hidden at info")
    log.info("round %d stage %s closed", 3, "unmask", extra={"round": 3, "answered": 2})
    log.warning("something odd")
    lines = stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["round 3 stage unmask closed", "something odd"]
    first = events[0]
    assert first["level"] == "info" and first["logger"] == "coordinator.rounds.driver"
    assert first["round"] == 3 and first["answered"] == 2 and first["timestamp"].endswith("Z")
    assert "message" not in first and "asctime" not in first


@pytest.mark.usefixtures("restore_root")
def test_console_format_and_a_second_configuration_replaces_the_first() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(level="debug", fmt="json", stream=first)
    configure_logging(level="warning", fmt="console", stream=second)
    log = logging.getLogger("coordinator.sdk.example")
    log.info("not shown at warning")
    log.error("round %d refused: %s", 1, "bad proof", extra={"round": 1})
    assert first.getvalue() == ""
    text = second.getvalue()
    assert "round 1 refused: bad proof" in text and "[error" in text and "round=1" in text
    assert "not shown" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
