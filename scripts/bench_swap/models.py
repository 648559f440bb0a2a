"""A SavedModel holding one large variable, to measure what an unloaded version leaves resident.

`y = x + big[0]` on a float32 input `x` of shape [-1] (signature `serving_default`); `big` is a
float32 variable of `mib` MiB, every element `fill` (1.0 unless asked: `y = x + 1`; the per-swap
benchmark alternates fill 1 and 2 between versions to tell which version answered). The graph
holds only a `Fill` op for it (saved_model.pb stays small); the checkpoint under variables/
holds the `mib` MiB, which every load reads back into memory, as a real model's weights are.

Build it in a child process (`python scripts/bench_swap/models.py OUT MIB`, or `build()` which
runs that): building a 1 GiB model needs about 2 GiB while it runs, and a child gives it all back.
Nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MIB = 1 << 20


def export(export_dir: Path, mib: int, fill: float = 1.0) -> None:
    """Write the model to `export_dir` (must not exist). Imports TensorFlow."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        big = v1.Variable(tf.fill([mib * MIB // 4], tf.constant(fill, tf.float32)), name="big")
        x = v1.placeholder(tf.float32, shape=[None], name="x")
        y = tf.add(x, tf.gather(big, 0), name="y")
        sess.run(big.initializer)
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"x": info(x)},
            outputs={"y": info(y)},
            method_name=v1.saved_model.signature_constants.PREDICT_METHOD_NAME,
        )
        builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(
            sess,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map={"serving_default": signature},
        )
        builder.save()


def build(export_dir: Path, mib: int, fill: float = 1.0) -> Path:
    """`export()` in a child process (so this one never holds the variable); returns the dir."""
    subprocess.run(
        [sys.executable, __file__, str(export_dir), str(mib), str(fill)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return export_dir


def export_mlp_variant(export_dir: Path, seed: int) -> None:
    """The demo MLP (scripts/make_demo_models.py, with its warmup record) with weights from
    another numpy seed: same signatures and cost, different answers."""
    import functools

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import make_demo_models as demo

    demo.mlp_weights = functools.partial(demo.mlp_weights, seed)  # type: ignore[assignment]
    demo.export_mlp(export_dir)


def build_mlp_variant(export_dir: Path, seed: int) -> Path:
    """`export_mlp_variant()` in a child process; returns the dir."""
    subprocess.run(
        [sys.executable, __file__, "mlp", str(export_dir), str(seed)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return export_dir


if __name__ == "__main__":
    if sys.argv[1] == "mlp":
        export_mlp_variant(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        fill = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
        export(Path(sys.argv[1]), int(sys.argv[2]), fill)
