"""Fixtures for the admin API and status page tests: a few real SavedModel versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.harness import build_bias_versions

VERSIONS = 4
TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="session")
def version_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SavedModels `<lib>/<v>` (v = 1..4) computing 0.5*x + v: every answer names its version."""
    return build_bias_versions(tmp_path_factory.mktemp("admin_versions"), range(1, VERSIONS + 1))


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
