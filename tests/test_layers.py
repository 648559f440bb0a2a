"""The import direction of ARCHITECTURE.md: main, lifespan, cli -> api, runtime, storage, core ->
errors.

core imports neither api, runtime, storage, fastapi nor tensorflow; storage builds on core only;
api never imports runtime or storage; only runtime imports tensorflow. Checked on the source with
ast, so a lazy import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"

FORBIDDEN = {
    "core": ("app.api", "app.control", "app.runtime", "app.storage", "app.main", "app.lifespan",
             "app.cli", "fastapi", "starlette", "tensorflow", "tensorflow_serving"),
    "api": ("app.runtime", "app.storage", "app.lifespan", "app.cli", "tensorflow",
            "tensorflow_serving"),
    "control": ("app.runtime", "app.lifespan", "app.cli", "app.main", "tensorflow",
                "tensorflow_serving"),
    # Object-store discovery builds on core's scanner contract; it serves nothing itself.
    "storage": ("app.api", "app.control", "app.runtime", "app.main", "app.lifespan", "app.cli",
                "fastapi", "starlette", "tensorflow", "tensorflow_serving"),
}  # fmt: skip


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending(layer: str) -> list[str]:
    bad = []
    for path in sorted((APP / layer).rglob("*.py")):
        for name in imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(APP)} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    assert offending(layer) == []


def test_only_runtime_imports_tensorflow() -> None:
    outside = [
        f"{path.relative_to(APP)}"
        for path in APP.rglob("*.py")
        if "runtime" not in path.relative_to(APP).parts
        and any(n == "tensorflow" or n.startswith("tensorflow.") for n in imports(path))
    ]
    assert outside == []
