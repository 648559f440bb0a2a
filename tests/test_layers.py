"""The import direction of ARCHITECTURE.md:
main, lifespan, cli -> api, grpc, control -> serving -> core -> errors; runtime and storage only
through lifespan.

core imports neither api, grpc, serving, control, runtime, storage, fastapi nor tensorflow;
serving imports no edge, no runtime and no wire format (fastapi, grpc, protobuf); the edges (api,
grpc) never import runtime, storage or each other; storage builds on core only; only runtime
imports tensorflow, except that the gRPC edge may import TensorFlow's *protobuf* modules
(tensorflow.core.framework / tensorflow.core.example: the wire types of TF Serving's API).
Checked on the source with ast, so a lazy import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"

FORBIDDEN = {
    "core": ("app.api", "app.grpc", "app.serving", "app.control", "app.runtime", "app.storage",
             "app.main", "app.lifespan", "app.cli", "fastapi", "starlette", "grpc", "tensorflow",
             "tensorflow_serving"),
    "serving": ("app.api", "app.grpc", "app.control", "app.runtime", "app.storage", "app.main",
                "app.lifespan", "app.cli", "fastapi", "starlette", "grpc", "google.protobuf",
                "tensorflow", "tensorflow_serving"),
    "api": ("app.runtime", "app.grpc", "app.storage", "app.lifespan", "app.cli", "grpc",
            "tensorflow", "tensorflow_serving"),
    "grpc": ("app.runtime", "app.api", "app.control", "app.storage", "app.lifespan", "app.cli",
             "app.main", "fastapi", "starlette"),
    "control": ("app.runtime", "app.lifespan", "app.cli", "app.main", "tensorflow",
                "tensorflow_serving"),
    # Rollouts (issue 11): the split/table/config build on core and serve nothing themselves.
    # control's traffic window (app.control.traffic.Window) is the one part of control the
    # rollout analysis reuses (per-second buckets, latency histogram) instead of a second copy.
    "rollout": ("app.api", "app.grpc", "app.control.admin", "app.control.actions",
                "app.control.events", "app.control.page", "app.control.rollouts",
                "app.control.status", "app.runtime", "app.storage", "app.main",
                "app.lifespan", "app.cli", "fastapi", "starlette", "grpc", "tensorflow",
                "tensorflow_serving"),
    # Object-store discovery builds on core's scanner contract; it serves nothing itself.
    "storage": ("app.api", "app.control", "app.runtime", "app.main", "app.lifespan", "app.cli",
                "fastapi", "starlette", "tensorflow", "tensorflow_serving"),
}  # fmt: skip
# The gRPC edge speaks TF Serving's protos, which live in TensorFlow's package.
TF_PROTOS = ("tensorflow.core.framework", "tensorflow.core.example")


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
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


def test_core_imports_only_the_pure_split_of_rollout() -> None:
    """Routing reads a rollout's split on the hot path (app.rollout.split: stdlib only); the
    table, config and file poller build on core, never the other way."""
    used = {
        n
        for path in (APP / "core").rglob("*.py")
        for n in imports(path)
        if n == "app.rollout" or n.startswith("app.rollout.")
    }
    assert used <= {"app.rollout.split", "app.rollout.split.Split"}
    split = imports(APP / "rollout" / "split.py")
    assert not {n for n in split if n.startswith("app")}


def test_only_runtime_imports_tensorflow() -> None:
    outside = [
        f"{path.relative_to(APP)} imports {n}"
        for path in APP.rglob("*.py")
        if "runtime" not in path.relative_to(APP).parts
        for n in imports(path)
        if (n == "tensorflow" or n.startswith("tensorflow."))
        and not (path.relative_to(APP).parts[0] == "grpc" and n.startswith(TF_PROTOS))
    ]
    assert outside == []


def test_from_app_import_runtime_is_caught(tmp_path: Path) -> None:
    """`from app import runtime` names the module in the alias, not in `module`."""
    f = tmp_path / "x.py"
    f.write_text("from app import runtime\nfrom app.core import routing\n")
    assert imports(f) >= {"app.runtime", "app.core.routing"}
