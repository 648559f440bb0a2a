"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def testdata() -> Path:
    """/work/shared/testdata (CI keeps shared/ beside the checkout at the same relative place)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "testdata"


@pytest.fixture(autouse=True)
def no_default_grpc_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test binds TF Serving's fixed gRPC port 8500 unless it asks for a port: parallel runs
    (and other servers on the machine) would collide. Tests that need gRPC pass `port=`."""
    monkeypatch.setenv("HOTSERVE_PORT", "0")
