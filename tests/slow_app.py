"""`uvicorn --factory tests.slow_app:create_app`: hotserve, configured from the environment like
`app.main:create_app`, serving the fake model of `tests.fakes` (y = 2x) that takes
`$SLOW_MODEL_DELAY` seconds per call and creates the file `$SLOW_MODEL_STARTED` when a call
begins, so a test can send a signal while a request is provably in flight."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from fastapi import FastAPI

from app.main import create_app as create_hotserve_app
from tests.fakes import SlowLoader, SlowServable


class _Announcing(SlowServable):
    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        Path(os.environ["SLOW_MODEL_STARTED"]).touch()
        return super().run(signature, inputs)


class _AnnouncingLoader(SlowLoader):
    def load(self, path: Path) -> SlowServable:
        return _Announcing(self.delay)


def create_app() -> FastAPI:
    return create_hotserve_app(loader=_AnnouncingLoader(float(os.environ["SLOW_MODEL_DELAY"])))
