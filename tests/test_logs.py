"""`configure_logging`: one stderr handler per process, the level from --log_level, and a
logging set-up made by someone else (uvicorn --log-config, pytest, an embedder) left alone."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest

from app.logs import TRACE, configure_logging


@contextlib.contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger as a fresh process has it (no handlers), restored afterwards. Entered in
    the test body: pytest attaches its capture handlers around the body, after fixtures."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        yield root
    finally:
        root.handlers = handlers
        root.setLevel(level)


def test_installs_one_handler_and_follows_the_level() -> None:
    with bare_root() as root:
        assert configure_logging("info") is True
        assert root.level == logging.INFO
        (handler,) = root.handlers
        # The CLI calls it before and after parsing flags, create_app once more: one handler.
        assert configure_logging("debug") is True
        assert configure_logging("trace") is True
        assert root.handlers == [handler]
        assert root.level == TRACE


def test_state_changes_reach_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    with bare_root():
        configure_logging("info")
        logging.getLogger("app.core.lifecycle").info("model %s version %d: AVAILABLE", "m", 3)
        logging.getLogger("app.core.lifecycle").debug("not shown at info")
    err = capsys.readouterr().err
    assert "INFO app.core.lifecycle: model m version 3: AVAILABLE" in err
    assert "not shown" not in err


def test_foreign_configuration_is_left_alone() -> None:
    with bare_root() as root:
        theirs = logging.NullHandler()
        root.addHandler(theirs)
        root.setLevel(logging.ERROR)
        assert configure_logging("debug") is False
        assert root.handlers == [theirs]
        assert root.level == logging.ERROR


def test_create_app_applies_the_settings_log_level() -> None:
    """What `uvicorn --factory app.main:create_app` relies on (HOTSERVE_LOG_LEVEL)."""
    from app.main import create_app
    from app.settings import Settings

    with bare_root() as root:
        create_app(Settings(log_level="warning"))
        assert root.level == logging.WARNING
        create_app(Settings(log_level="debug"))
        assert root.level == logging.DEBUG
        assert len(root.handlers) == 1
