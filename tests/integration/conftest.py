"""Fixtures for tests against a real `python -m app` server process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness import REPO

N_VERSIONS = 24

GENERATE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from make_demo_models import export_half_plus
out = Path(sys.argv[2])
for v in range(1, int(sys.argv[3]) + 1):
    export_half_plus(out / str(v), float(v))
"""


@pytest.fixture(scope="session")
def bias_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SavedModels `<lib>/<v>` computing 0.5*x + v, so every answer names its version."""
    lib = tmp_path_factory.mktemp("versions")
    # A subprocess keeps the TF1 graph-building state out of this process (see build_test_models).
    done = subprocess.run(
        [sys.executable, "-c", GENERATE, str(REPO / "scripts"), str(lib), str(N_VERSIONS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the versions failed ({done.returncode}):\n{done.stderr}")
    return lib


def version_of(predictions: list[float], xs: list[float]) -> int:
    """The version that produced `predictions` for inputs `xs` (all rows must agree)."""
    biases = {round(p - 0.5 * x, 3) for p, x in zip(predictions, xs, strict=True)}
    assert len(biases) == 1, f"rows from different versions: {predictions}"
    bias = biases.pop()
    assert bias == int(bias), predictions
    return int(bias)


async def predict_version(
    c: httpx.AsyncClient, url: str, xs: list[float], failures: list[str]
) -> int | None:
    """POST `xs` as `instances` to `url`: the version that answered, or None after recording in
    `failures` why the request failed (a transport error, or a non-200 answer and its body)."""
    try:
        r = await c.post(url, json={"instances": xs})
    except httpx.HTTPError as exc:
        failures.append(repr(exc))
        return None
    if r.status_code != 200:
        failures.append(f"{r.status_code} {r.text}")
        return None
    return version_of(r.json()["predictions"], xs)
