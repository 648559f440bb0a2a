"""SavedModels for tests/runtime/test_restore.py: `python restore_models.py OUT`.

Run in a child process (TF1 graph building leaves global state behind). Every variable holds
seeded random values, so a restore that misplaces one byte is seen. Nothing is downloaded.
- `multi`: ref and resource variables: a 3 MiB float32 [3072, 256] (ref, many pieces),
  a 2.4 MiB float64 [300000] (resource), two rows of 400 KB [2, 100000] (a row
  larger than a piece), small scalars/ints/bools/halves grouped into one unit.
- `partitioned`: a variable split by a fixed-size partitioner (restored from slices).
- `strings`: a string variable beside a float one.
- `sharded`: variables on two CPU devices saved by a sharded saver: two data files.
- `tf2`: a TF2 module (tf.saved_model.save) with a 2 MiB variable and a scalar.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1


def _export(out: Path, build: Callable[[], tf.Tensor], devices: int = 1) -> None:
    graph = tf.Graph()
    config = v1.ConfigProto(device_count={"CPU": devices})
    with graph.as_default(), v1.Session(graph=graph, config=config) as sess:
        x = v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(x + build(), name="y")
        sess.run(v1.global_variables_initializer())
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"x": info(x)}, outputs={"y": info(y)}, method_name="tensorflow/serving/predict"
        )
        builder = v1.saved_model.builder.SavedModelBuilder(str(out))
        builder.add_meta_graph_and_variables(
            sess, ["serve"], signature_def_map={"serving_default": signature}, clear_devices=True
        )
        builder.save()


def _var(name: str, value: np.ndarray, resource: bool) -> tf.Tensor:
    return v1.get_variable(name, initializer=tf.constant(value), use_resource=resource)


def multi() -> tf.Tensor:
    rng = np.random.default_rng(12)
    big = _var("big2d", rng.standard_normal((3072, 256)).astype(np.float32), resource=False)
    long = _var("long1d", rng.standard_normal(300_000), resource=True)
    rows = _var("wide_rows", rng.standard_normal((2, 100_000)).astype(np.float32), False)
    small = [
        _var("scalar", np.float32(rng.standard_normal()), resource=True),
        _var("ints", rng.integers(-(2**40), 2**40, 7), resource=False),
        _var("flags", rng.integers(0, 2, 5).astype(bool), resource=True),
        _var("halves", rng.standard_normal(9).astype(np.float16), resource=False),
        _var("empty", np.zeros((0, 3), np.float32), resource=True),
    ]
    total = tf.reduce_sum(big) + tf.cast(tf.reduce_sum(long), tf.float32) + tf.reduce_sum(rows)
    extra = tf.cast(tf.reduce_sum(small[1]), tf.float32) + tf.cast(small[3][0], tf.float32)
    return (
        total + small[0] + extra + tf.cast(tf.reduce_sum(tf.cast(small[2], tf.int32)), tf.float32)
    )


def empties() -> tf.Tensor:
    """Zero-size variables around a full one, so that one of them comes first in the restore's
    bank whichever order the plan takes (an empty array's address says nothing)."""
    v1.get_variable("a_empty", initializer=tf.zeros([0, 3]), use_resource=True)
    full = _var("m_full", np.random.default_rng(7).standard_normal((1000, 3)), resource=True)
    v1.get_variable("zz_empty", initializer=tf.zeros([0, 3]), use_resource=True)
    return tf.cast(tf.reduce_sum(full), tf.float32)


def partitioned() -> tf.Tensor:
    value = np.random.default_rng(3).standard_normal((30, 4)).astype(np.float32)
    part = v1.get_variable(
        "part",
        initializer=tf.constant(value),
        partitioner=v1.fixed_size_partitioner(3),
        use_resource=False,
    )
    return tf.reduce_sum(part.as_tensor())


def strings() -> tf.Tensor:
    v1.get_variable("words", initializer=tf.constant([b"a", b"bc\x00"]), use_resource=True)
    value = np.random.default_rng(4).standard_normal(10).astype(np.float32)
    return tf.reduce_sum(_var("numbers", value, resource=True))


def sharded() -> tf.Tensor:
    rng = np.random.default_rng(5)
    with tf.device("/cpu:0"):
        first = _var("on_cpu0", rng.standard_normal((200, 700)).astype(np.float32), False)
    with tf.device("/cpu:1"):
        second = _var("on_cpu1", rng.standard_normal(100_000).astype(np.float32), True)
    return tf.reduce_sum(first) + tf.reduce_sum(second)


def tf2_module(out: Path) -> None:
    """A TF2 SavedModel (restored through a traced function) with a 2 MiB variable."""
    rng = np.random.default_rng(6)
    module = tf.Module()
    module.w = tf.Variable(rng.standard_normal((2048, 256)).astype(np.float32), name="w")
    module.b = tf.Variable(np.float32(rng.standard_normal()), name="b")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x + tf.reduce_sum(module.w) + module.b}

    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})


def main(out: Path) -> None:
    _export(out / "multi" / "1", multi)
    _export(out / "empties" / "1", empties)
    _export(out / "partitioned" / "1", partitioned)
    _export(out / "strings" / "1", strings)
    _export(out / "sharded" / "1", sharded, devices=2)
    tf2_module(out / "tf2" / "1")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
