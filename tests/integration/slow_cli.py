"""`python -m tests.integration.slow_cli [flags]`: the real `hotserve` command (flags, signals,
shutdown contract, uvicorn) serving the fake model of `tests.fakes` (y = 2x) that takes
`$SLOW_MODEL_DELAY` seconds per call, so a test can hold requests in flight across a signal."""

from __future__ import annotations

import os
import sys

from app import cli
from tests.fakes import SlowLoader

if __name__ == "__main__":
    delay = float(os.environ.get("SLOW_MODEL_DELAY", "0"))
    sys.exit(cli.main(serve=lambda s: cli.serve_with_uvicorn(s, loader=SlowLoader(delay))))
