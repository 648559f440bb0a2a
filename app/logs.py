"""Logging set-up shared by every entry point: `hotserve`, `python -m app` and
`uvicorn --factory app.main:create_app` (all reach `configure_logging` through `create_app`;
the CLI also calls it earlier, so notes logged while flags are parsed are shown).

Why it is needed: uvicorn configures only its own `uvicorn.*` loggers, so without a handler on
the root logger every INFO record of `app.*` (each version state change: LOADING, AVAILABLE,
UNLOADING, END) would be dropped under `uvicorn app.main:create_app`.

Rule: if someone else already configured logging (the root logger has a handler that is not
ours: `uvicorn --log-config`, an embedding application, pytest), it is left alone. Otherwise one
stderr handler is installed, once per process (it is recognised on later calls, so the CLI and
`create_app` never install two), and the root level follows `--log_level`/`HOTSERVE_LOG_LEVEL`.
Call from the main thread at start-up; not thread-safe against concurrent reconfiguration.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from app import tracing

TRACE = 5  # uvicorn's TRACE level, below DEBUG
LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RequestFields(logging.Filter):
    """Adds `request_id` and `trace_id` of the request being handled (app.tracing) to every
    record passing the handler: "-" outside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = tracing.current()
        record.request_id = ctx.request_id if ctx is not None else "-"
        record.trace_id = (ctx.trace_id if ctx is not None else None) or "-"
        return True


class TextFormatter(logging.Formatter):
    """FORMAT, plus ` [request_id=...]` on the lines written while handling a request."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", "-")
        return text if rid == "-" else f"{text} [request_id={rid}]"


# LogRecord attributes that are not "extra" fields a caller added.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, request_id and
    trace_id when inside a request, exception text when any, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value != "-":
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _HotserveHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (its class marks it as ours)."""


def configure_logging(level: str, fmt: str = "text") -> bool:
    """Send log records at `level` (a `Settings.log_level` name) and above to stderr, as text or
    JSON lines (`fmt`, `Settings.log_format`), unless the process configured logging itself.
    Returns True when hotserve's handler is in charge.

    Raises KeyError for an unknown level name (Settings validates it first).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _HotserveHandler)]
    if len(ours) != len(root.handlers):
        return False  # configured by someone else: respect it
    if not ours:
        handler = _HotserveHandler()
        handler.addFilter(RequestFields())
        root.addHandler(handler)
        ours = [handler]
    for handler in ours:
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(LEVELS[level])
    return True
