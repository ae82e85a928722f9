"""Structured logs for ``secagg serve``, ``silo`` and ``demo``: stdlib ``logging`` rendered by structlog.

Every module keeps its ``logging.getLogger(__name__)``; :func:`configure_logging` routes the records through
structlog's ``ProcessorFormatter``, so ``log.info("...", extra={...})`` becomes one event with those keys, as
console text or one JSON object per line.

Notes:
    Log calls carry names, counts, durations, hashes and epsilons only: never a key, a mask, a share, a
    model or an update (DESIGN 2, 8). The renderer adds nothing a call did not pass.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "LogFormat", "LogLevel", "configure_logging", "log_handler"]

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["console", "json"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[LogFormat, ...] = ("console", "json")

_MARK = "_secagg_handler"


def _drop_formatter_leftovers(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Drop ``message``/``asctime``, which another handler's stdlib formatter may have set on the record."""
    event.pop("message", None)
    event.pop("asctime", None)
    return event


def _formatter(fmt: LogFormat) -> logging.Formatter:
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_formatter_leftovers,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "json":
        final += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        final.append(structlog.dev.ConsoleRenderer(colors=False))
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)


def log_handler(
    *, fmt: LogFormat = "console", stream: TextIO | None = None, path: Path | None = None
) -> logging.Handler:
    """A handler rendering records as ``fmt`` to ``path`` (appended) or ``stream`` (default stderr)."""
    handler: logging.Handler
    if path is not None:
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_formatter(fmt))
    setattr(handler, _MARK, True)
    return handler


def configure_logging(
    *,
    level: LogLevel = "info",
    fmt: LogFormat = "console",
    stream: TextIO | None = None,
    path: Path | None = None,
) -> logging.Handler:
    """Send every log record at ``level`` or above to one structlog-rendered handler; returns it.

    A handler an earlier call installed is replaced (the CLI configures once per command; tests call it
    again). Without ``stream`` and ``path`` the events go to stderr.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = log_handler(fmt=fmt, stream=stream, path=path)
    root.addHandler(handler)
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler
