"""Shared fixtures: the test models, TF Serving's own files when present, no leaked processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LIVE, TF_SERVING_TESTDATA, build_test_models, stop_process


@pytest.fixture(scope="session")
def testdata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test models, built once per session by scripts/make_test_models.py into a temporary
    directory, laid out under TF Serving's testdata names (`saved_model_half_plus_two_cpu/
    00000123`, ...). Tests may read them but must copy before changing anything."""
    started = time.monotonic()
    out = build_test_models(tmp_path_factory.mktemp("testdata"))
    print(f"\nbuilt the test models in {time.monotonic() - started:.1f}s: {out}")
    return out


@pytest.fixture(scope="session")
def tf_serving_testdata() -> Path:
    """TF Serving's own test models and expected JSON (../shared/testdata); the test is skipped
    where that folder does not exist, e.g. on a fresh clone."""
    if not TF_SERVING_TESTDATA.is_dir():
        pytest.skip(f"TF Serving's test data not found at {TF_SERVING_TESTDATA} (never copied in)")
    return TF_SERVING_TESTDATA


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    """Safety net: stop any process `harness.spawn` started that is still alive at the end."""
    yield
    leaked = [proc.args for proc in list(LIVE) if proc.poll() is None]
    for proc in list(LIVE):
        stop_process(proc, timeout=5)
    if leaked:
        # A teardown error makes the run fail loudly, naming the culprits.
        raise RuntimeError(f"processes still running at the end of the session: {leaked}")


@pytest.fixture(autouse=True)
def no_default_grpc_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test binds TF Serving's fixed gRPC port 8500 unless it asks for a port: parallel runs
    (and other servers on the machine) would collide. Tests that need gRPC pass `port=`."""
    monkeypatch.setenv("HOTSERVE_PORT", "0")
