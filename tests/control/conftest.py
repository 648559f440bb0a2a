"""Fixtures for the admin API and status page tests: a few real SavedModel versions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

GENERATE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from make_demo_models import export_half_plus
out = Path(sys.argv[2])
for v in range(1, int(sys.argv[3]) + 1):
    export_half_plus(out / str(v), float(v))
"""
VERSIONS = 4
TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="session")
def version_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SavedModels `<lib>/<v>` (v = 1..4) computing 0.5*x + v: every answer names its version."""
    lib = tmp_path_factory.mktemp("admin_versions")
    subprocess.run(
        [sys.executable, "-c", GENERATE, str(REPO / "scripts"), str(lib), str(VERSIONS)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return lib


def publish(library: Path, base: Path, *versions: int) -> None:
    """Copy versions of the library into a model's base path (complete dirs only)."""
    for v in versions:
        tmp = base / f".tmp-{v}"
        shutil.copytree(library / str(v), tmp)
        tmp.rename(base / str(v))


def broken(base: Path, version: int) -> None:
    """A version directory that looks complete but does not load."""
    path = base / str(version)
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"not a SavedModel")
