"""Edge-case SavedModels for tests/runtime/test_restore_edges.py: `python restore_edge_models.py
OUT`.

Run in a child process (TF1 graph building leaves global state behind). Seeded random values
everywhere, so a misplaced byte is seen. Nothing is downloaded.
- `dtypes`: one variable per numeric dtype the chunked restore handles (bfloat16, complex,
  unsigned ints, half...), ref and resource, some multi-piece, some rank 0.
- `many`: 150 small variables (three banks) under name scopes, ref and resource mixed.
- `unknown_shape`: a ref variable made with validate_shape=False (its graph shape is unknown)
  beside a normal one.
- `table`: a MutableHashTable (a saveable restored by LookupTableImportV2) beside a variable.
- `custom_saver`: a deferred saver of a subset of the variables under other names.
- `tf2_unknown_shape`: a TF2 module with a variable of unknown shape.
- `tf2_table`: a TF2 module holding a MutableHashTable and a variable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1


def _export(out: Path, build: Callable[[], tf.Tensor]) -> None:
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        x = v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(x + build(), name="y")
        sess.run([v1.global_variables_initializer(), v1.tables_initializer()])
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"x": info(x)}, outputs={"y": info(y)}, method_name="tensorflow/serving/predict"
        )
        builder = v1.saved_model.builder.SavedModelBuilder(str(out))
        builder.add_meta_graph_and_variables(
            sess, ["serve"], signature_def_map={"serving_default": signature}
        )
        builder.save()


def _values(rng: np.random.Generator, dtype: tf.DType, shape: tuple[int, ...]) -> np.ndarray:
    np_dtype = dtype.as_numpy_dtype
    if dtype.is_complex:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np_dtype)
    if dtype.is_floating:
        return rng.standard_normal(shape).astype(np_dtype)
    if dtype == tf.bool:
        return rng.integers(0, 2, shape).astype(bool)
    info = np.iinfo(np_dtype)
    return rng.integers(info.min, info.max, shape, dtype=np_dtype, endpoint=True)


def dtypes() -> tf.Tensor:
    rng = np.random.default_rng(21)
    kinds = [
        tf.bfloat16,
        tf.float16,
        tf.float64,
        tf.complex64,
        tf.complex128,
        tf.uint8,
        tf.uint16,
        tf.uint32,
        tf.uint64,
        tf.int8,
        tf.int16,
        tf.bool,
    ]
    total = tf.constant(0.0)
    for i, dtype in enumerate(kinds):
        # A multi-piece matrix, a rank-0 one, both kinds of variable.
        for shape in ((70_000 // dtype.size + 3, 3), ()):
            value = tf.constant(_values(rng, dtype, shape), dtype)
            resource = (i + len(shape)) % 2 == 0
            var = v1.get_variable(
                f"{dtype.name}_{len(shape)}", initializer=value, use_resource=resource
            )
            total += tf.cast(tf.size(var), tf.float32)
    return total


def many() -> tf.Tensor:
    rng = np.random.default_rng(22)
    total = tf.constant(0.0)
    for i in range(150):
        with tf.name_scope(f"block{i % 7}"), v1.variable_scope(f"layer{i}"):
            shape = (int(rng.integers(1, 40)),)
            var = v1.get_variable(
                "w",
                initializer=tf.constant(rng.standard_normal(shape).astype(np.float32)),
                use_resource=i % 3 == 0,
            )
            total += tf.reduce_sum(var)
    return total


def unknown_shape() -> tf.Tensor:
    rng = np.random.default_rng(23)
    loose = v1.Variable(
        rng.standard_normal((50, 4)).astype(np.float32),
        validate_shape=False,
        name="loose",
        use_resource=False,
    )
    fixed = v1.get_variable(
        "fixed", initializer=tf.constant(rng.standard_normal(8).astype(np.float32))
    )
    return tf.reduce_sum(loose) + tf.reduce_sum(fixed)


def table() -> tf.Tensor:
    rng = np.random.default_rng(24)
    words = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, default_value=-1)
    insert = words.insert(tf.constant(["a", "b"]), tf.constant([7, 9], tf.int64))
    v1.add_to_collection(v1.GraphKeys.TABLE_INITIALIZERS, insert)
    var = v1.get_variable(
        "weights", initializer=tf.constant(rng.standard_normal(10).astype(np.float32))
    )
    return tf.reduce_sum(var) + tf.cast(words.lookup(tf.constant("a")), tf.float32)


def custom_saver(out: Path) -> None:
    """A saver of a subset of the variables under other checkpoint names
    (restoring sequentially); the rest is initialized by the main op; a ref variable read
    in a TF1 while loop."""
    rng = np.random.default_rng(27)
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        x = v1.placeholder(tf.float32, [None], name="x")
        with tf.name_scope("outer"):
            kept = v1.get_variable(
                "kept", initializer=tf.constant(rng.standard_normal((600, 70)).astype(np.float32))
            )
            loop_var = v1.get_variable(
                "loop_var",
                initializer=tf.constant(rng.standard_normal(5).astype(np.float32)),
                use_resource=False,
            )
            fresh = v1.get_variable("fresh", initializer=tf.constant([1.5, 2.5]))
        _, acc = v1.while_loop(
            lambda i, a: i < 3, lambda i, a: (i + 1, a + tf.reduce_sum(loop_var)), [0, 0.0]
        )
        y = tf.identity(x + tf.reduce_sum(kept) + acc + tf.reduce_sum(fresh), name="y")
        sess.run(v1.global_variables_initializer())
        saver = v1.train.Saver({"renamed/kept": kept, "loop": loop_var}, restore_sequentially=True)
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"x": info(x)}, outputs={"y": info(y)}, method_name="tensorflow/serving/predict"
        )
        builder = v1.saved_model.builder.SavedModelBuilder(str(out))
        builder.add_meta_graph_and_variables(
            sess,
            ["serve"],
            signature_def_map={"serving_default": signature},
            saver=saver,
            main_op=v1.variables_initializer([fresh]),
        )
        builder.save()


def tf2_unknown_shape(out: Path) -> None:
    rng = np.random.default_rng(25)
    module = tf.Module()
    module.w = tf.Variable(
        rng.standard_normal((300, 5)).astype(np.float32), shape=tf.TensorShape(None), name="w"
    )
    module.b = tf.Variable(rng.standard_normal(4).astype(np.float32), name="b")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x + tf.reduce_sum(module.w) + tf.reduce_sum(module.b)}

    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})


def tf2_table(out: Path) -> None:
    rng = np.random.default_rng(26)
    module = tf.Module()
    module.table = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, default_value=-1)
    module.table.insert(tf.constant(["a", "b"]), tf.constant([7, 9], tf.int64))
    module.w = tf.Variable(rng.standard_normal((40, 3)).astype(np.float32), name="w")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        hit = tf.cast(module.table.lookup(tf.constant("a")), tf.float32)
        return {"y": x + tf.reduce_sum(module.w) + hit}

    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})


def main(out: Path) -> None:
    for name, build in [
        ("dtypes", dtypes),
        ("many", many),
        ("unknown_shape", unknown_shape),
        ("table", table),
    ]:
        _export(out / name / "1", build)
    custom_saver(out / "custom_saver" / "1")
    tf2_unknown_shape(out / "tf2_unknown_shape" / "1")
    tf2_table(out / "tf2_table" / "1")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
