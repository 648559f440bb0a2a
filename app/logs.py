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

import logging

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


class _HotserveHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (its class marks it as ours)."""


def configure_logging(level: str) -> bool:
    """Send log records at `level` (a `Settings.log_level` name) and above to stderr, unless the
    process configured logging itself. Returns True when hotserve's handler is in charge.

    Raises KeyError for an unknown level name (Settings validates it first).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _HotserveHandler)]
    if len(ours) != len(root.handlers):
        return False  # configured by someone else: respect it
    if not ours:
        handler = _HotserveHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(LEVELS[level])
    return True
