"""Logging: structlog, readable console lines by default, JSON lines in pods.

The agent's loggers are lazy: a message below the configured level costs a comparison, and
structlog (which pulls in asyncio) is imported only when something is actually emitted. The
agent's ``check`` and ``repro`` start noticeably faster for it, above all in an emulated guest.
"""

from __future__ import annotations

import sys
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
# The stdlib logging levels, written out: importing logging (threading, traceback, string,
# weakref, a regex compiled at import) costs the agent more than the rest of its start-up
# logic in an emulated guest.
_NUMERIC = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_settings = {"format": "console", "level": "warning", "ready": False}


def _renderer(log_format: str, colors: bool) -> Any:
    """The one line format: JSON in pods, structlog's console lines otherwise."""
    import structlog

    if log_format == "json":
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=colors)


def _configure_structlog() -> None:
    import structlog

    fmt, level = str(_settings["format"]), str(_settings["level"])
    renderer = _renderer(fmt, colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_NUMERIC[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _settings["ready"] = True


def configure(log_format: str = "console", level: str = "info") -> None:
    """Set where and how much to log (stderr; stdout stays for results)."""
    _settings.update(format=log_format, level=level, ready=False)
    if "structlog" in sys.modules:
        _configure_structlog()


def route_stdlib_logging(log_format: str, level: str) -> None:
    """The operator's libraries (kopf, aiohttp, urllib3) log through ``logging``: render their
    records like structlog's own lines, on stderr."""
    import logging

    import structlog

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=_renderer(log_format, colors=False),
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_NUMERIC[level])
    # kopf's per-object handler chatter is debug-level noise at fleet scale.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # One access line per kubelet probe of /healthz is noise; errors still show.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # urllib3's "Retrying ..." per connection attempt: a failed call is logged (and counted)
    # once by the operator itself.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


class LazyLogger:
    """A structlog logger that is created on the first message that passes the level."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def _emit(self, level: str, event: str, **fields: Any) -> None:
        if _NUMERIC[level] < _NUMERIC[str(_settings["level"])]:
            return
        if not _settings["ready"]:
            _configure_structlog()
            self._logger = None
        if self._logger is None:
            import structlog

            self._logger = structlog.get_logger(self._name)
        getattr(self._logger, level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, **fields)


def get_logger(name: str) -> LazyLogger:
    return LazyLogger(name)

