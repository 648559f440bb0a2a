"""Fixtures for tests against a real `python -m app` server process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.harness import build_bias_versions

N_VERSIONS = 24


@pytest.fixture(scope="session")
def bias_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SavedModels `<lib>/<v>` computing 0.5*x + v, so every answer names its version."""
    return build_bias_versions(tmp_path_factory.mktemp("versions"), range(1, N_VERSIONS + 1))


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
