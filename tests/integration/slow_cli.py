"""`python -m tests.integration.slow_cli [flags]`: the real `hotserve` command (flags, signals,
shutdown contract, uvicorn) serving the fake model of `tests.fakes` (y = 2x) that takes
`$SLOW_MODEL_DELAY` seconds per call, and `$SLOW_MODEL_LOAD_DELAY` seconds to load, so a test can
hold requests or a load in flight across a signal."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from app import cli
from tests.fakes import SlowLoader, SlowServable


class _SlowToLoad(SlowLoader):
    def __init__(self, delay: float, load_delay: float) -> None:
        super().__init__(delay)
        self.load_delay = load_delay

    def load(self, path: Path) -> SlowServable:
        time.sleep(self.load_delay)
        return super().load(path)


if __name__ == "__main__":
    loader = _SlowToLoad(
        float(os.environ.get("SLOW_MODEL_DELAY", "0")),
        float(os.environ.get("SLOW_MODEL_LOAD_DELAY", "0")),
    )
    sys.exit(cli.main(serve=lambda s: cli.serve_with_uvicorn(s, loader=loader)))
