"""The paced, chunked restore (app.runtime.restore, app.runtime.checkpoint) on real SavedModels.

Every variable restored in units must be bit-identical to TF's own restore
(`SavedModelLoader.restore_variables`, what `tf.compat.v1.saved_model.loader.load` runs);
graphs the chunked path does not handle must fall back and still be right; damaged data must
fail with TF's code (DATA_LOSS, OUT_OF_RANGE, NOT_FOUND) naming the tensor and the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

from app import errors
from app.core import pacing
from app.runtime import checkpoint, restore
from app.runtime.saved_model import InlineRuns, SavedModelLoader

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parents[1] / "scripts"
TEST_MODELS = [
    "saved_model_half_plus_two_cpu/00000123",
    "saved_model_half_plus_two_2_versions/00000124",
    "saved_model_half_plus_three/00000123",
    "saved_model_counter/00000123",
    "hot_swap/1",
]
NO_VARIABLES = ["matrix_half_plus_two/1", "conformance_multi_io/1"]
TF2_MODEL = "saved_model_half_plus_two_tf2_cpu/00000123"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/runtime/restore_models.py's models and the demo MLP, built in child processes."""
    out = tmp_path_factory.mktemp("restore_models")
    subprocess.run(
        [sys.executable, str(HERE / "restore_models.py"), str(out)],
        check=True,
        capture_output=True,
    )
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "import make_demo_models as m; m.export_mlp(Path(sys.argv[2]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(SCRIPTS), str(out / "mlp" / "1")],
        check=True,
        capture_output=True,
    )
    return out


def _values(session: Any) -> dict[str, bytes]:
    """Every variable's bytes, by variable op name (ref and resource variables)."""
    graph = session.graph
    fetches: dict[str, Any] = {}
    with graph.as_default():
        for op in graph.get_operations():
            if op.type in ("VariableV2", "Variable"):
                fetches[op.name] = op.outputs[0]
            elif op.type == "VarHandleOp":
                dtype = op.get_attr("dtype")
                fetches[op.name] = tf.raw_ops.ReadVariableOp(resource=op.outputs[0], dtype=dtype)
    values = {name: np.asarray(v) for name, v in session.run(fetches).items()}
    return {
        name: (repr(v.tolist()).encode() if v.dtype == object else v.tobytes())
        + str((v.dtype, v.shape)).encode()
        for name, v in values.items()
    }


def _counting() -> pacing.Pacer:
    """A pacer that never sleeps (share 1) and counts the units it is told about."""
    return pacing.Pacer(1.0, lambda: True)


def _restore_chunked(
    path: Path, pacer: pacing.Pacer
) -> tuple[restore.RestoreInfo, dict[str, bytes]]:
    graph = tf.Graph()
    with (
        tf.compat.v1.Session(graph=graph) as session,
        graph.as_default(),
        pacing.paced(pacer),
    ):
        loader = loader_impl.SavedModelLoader(str(path))
        saver, _ = loader.load_graph(graph, ["serve"])
        runs = InlineRuns(session)
        info = restore.restore(
            session,
            saver,
            path / "variables" / "variables",
            fallback=lambda: loader.restore_variables(runs, saver),
        )
        return info, _values(session)


def _restore_tf(path: Path) -> dict[str, bytes]:
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session, graph.as_default():
        loader = loader_impl.SavedModelLoader(str(path))
        saver, _ = loader.load_graph(graph, ["serve"])
        loader.restore_variables(session, saver)
        return _values(session)


def _same_as_tf(path: Path) -> tuple[restore.RestoreInfo, int]:
    pacer = _counting()
    info, values = _restore_chunked(path, pacer)
    expected = _restore_tf(path)
    assert values.keys() == expected.keys()
    for name, value in expected.items():
        assert values[name] == value, name
    return info, pacer.units


@pytest.mark.parametrize("rel", TEST_MODELS)
def test_test_models_restore_in_units_like_tf(testdata: Path, rel: str) -> None:
    info, paces = _same_as_tf(testdata / rel)
    assert info.how == "chunked"
    assert info.tensors >= 1
    # after each variable's ops are built, after making the callable, after every unit
    assert paces == info.tensors + info.units


@pytest.mark.parametrize("rel", NO_VARIABLES)
def test_models_without_variables(testdata: Path, rel: str) -> None:
    info, paces = _same_as_tf(testdata / rel)
    assert (info.how, info.units, paces) == ("none", 0, 0)


def test_tf2_model_restores_in_units_through_its_function(testdata: Path) -> None:
    info, _ = _same_as_tf(testdata / TF2_MODEL)
    assert (info.how, info.tensors) == ("chunked", 3)


def test_multi_chunk_ref_and_resource_variables(models: Path) -> None:
    info, paces = _same_as_tf(models / "multi" / "1")
    assert info.how == "chunked"
    assert info.tensors == 8
    chunk = restore.CHUNK_BYTES
    # big2d: 3 MiB, long1d: 2.4 MB and wide_rows: 800 kB in pieces of CHUNK_BYTES (bytes, not
    # rows: a row larger than a piece is cut too); scalar, ints, flags, halves: a unit each;
    # empty: none; one bank: one unit makes its callable, one allocates every variable.
    pieces = sum(-(-size // chunk) for size in (3072 * 256 * 4, 300_000 * 8, 2 * 100_000 * 4))
    assert info.units == 2 + pieces + 4
    assert paces == info.tensors + info.units
    assert paces > pieces


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_restored_variables_own_their_buffers(tmp_path: Path) -> None:
    """The restore writes through numpy arrays over the variables' memory; none may outlive it.
    While one does, the variable's buffer is shared and TF copies the whole variable at its
    first sparse access (`EnsureSparseVariableAccess`): seen here as 64 MiB more resident
    memory after one gather of two rows."""
    v1 = tf.compat.v1
    size = 16 * 2**20  # float32: 64 MiB
    path = tmp_path / "1"
    with tf.Graph().as_default(), v1.Session() as session:
        var = v1.get_variable("big", initializer=tf.ones([size // 1024, 1024]), use_resource=True)
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.builder.SavedModelBuilder(str(path))
        builder.add_meta_graph_and_variables(session, ["serve"])
        builder.save()
        del var
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session, graph.as_default():
        loader = loader_impl.SavedModelLoader(str(path))
        saver, _ = loader.load_graph(graph, ["serve"])
        info = restore.restore(
            session, saver, path / "variables" / "variables", fallback=lambda: None
        )
        assert info.how == "chunked"
        (handle,) = [op.outputs[0] for op in graph.get_operations() if op.type == "VarHandleOp"]
        gather = tf.raw_ops.ResourceGather(resource=handle, indices=[0, 7], dtype=tf.float32)
        # The callable first (a new executor allocates too), then the gather alone.
        fn = session.make_callable(gather)
        before = _resident_bytes()
        rows = fn()
        grown = _resident_bytes() - before
    assert rows.shape == (2, 1024) and float(rows.sum()) == 2048.0
    assert grown < size * 4 // 2, f"the first gather copied the variable: +{grown} bytes"


def test_zero_size_variables_first_in_a_bank(models: Path) -> None:
    info, _ = _same_as_tf(models / "empties" / "1")
    assert (info.how, info.tensors) == ("chunked", 3)


def test_reads_that_are_copies_fall_back_to_tfs_restore(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the session's outputs copies (another TensorFlow, a variable in copy-on-read
    mode), the pieces would fill memory TF never reads: the check sees two addresses for the
    two reads of a variable, and TF's restore runs instead, with the same values."""
    counter = iter(range(1, 10**9))
    monkeypatch.setattr(restore, "_address", lambda array: next(counter))
    info, _ = _same_as_tf(models / "multi" / "1")
    assert info.how == "tf"
    assert "copies" in info.reason


def test_a_variable_in_copy_on_read_mode_is_caught(models: Path) -> None:
    """A read of a variable that had a sparse access is a copy: the chunked restore must not
    write into it. Fallback here: nothing, so the variable keeps its initial value."""
    path = models / "multi" / "1"
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session, graph.as_default():
        loader = loader_impl.SavedModelLoader(str(path))
        saver, _ = loader.load_graph(graph, ["serve"])
        (handle,) = [
            op.outputs[0]
            for op in graph.get_operations()
            if op.type == "VarHandleOp" and op.name == "long1d"
        ]
        dtype = handle.op.get_attr("dtype")
        session.run(tf.raw_ops.AssignVariableOp(resource=handle, value=tf.zeros([300_000], dtype)))
        session.run(tf.raw_ops.ResourceGather(resource=handle, indices=[0], dtype=dtype))
        fell_back: list[bool] = []
        info = restore.restore(
            session,
            saver,
            path / "variables" / "variables",
            fallback=lambda: fell_back.append(True),
        )
    assert (info.how, fell_back) == ("tf", [True])


def test_a_failed_piece_leaves_no_view_of_a_variable(models: Path, tmp_path: Path) -> None:
    """A read failing mid-piece: no frame of the traceback may keep a slice of a variable's
    memory (it would keep the buffer shared, and alive as long as the exception)."""
    path, data, bundle = _copy(models, tmp_path)
    entry = bundle.entries["big2d"]
    data.write_bytes(data.read_bytes()[: entry.offset + entry.size // 2])
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session, graph.as_default():
        loader = loader_impl.SavedModelLoader(str(path))
        saver, _ = loader.load_graph(graph, ["serve"])
        with pytest.raises(checkpoint.DataLoss) as info:
            restore.restore(session, saver, path / "variables" / "variables", fallback=_fail)
    live = []
    tb = info.value.__traceback__
    while tb is not None:
        for name, value in tb.tb_frame.f_locals.items():
            if isinstance(value, memoryview) and "released memory" not in repr(value):
                live.append((tb.tb_frame.f_code.co_name, name))
        tb = tb.tb_next
    assert live == []


def _fail() -> None:
    raise AssertionError("no fallback expected")


def test_tf2_module_with_a_multi_piece_variable(models: Path) -> None:
    info, paces = _same_as_tf(models / "tf2" / "1")
    assert (info.how, info.tensors) == ("chunked", 2)
    assert paces > 2048 * 256 * 4 // restore.CHUNK_BYTES


def test_demo_mlp_loads_in_units_and_answers_like_tf(models: Path) -> None:
    path = models / "mlp" / "1"
    info, _ = _same_as_tf(path)
    assert info.how == "chunked"
    servable = SavedModelLoader().load(path)
    try:
        assert servable.restored is not None
        assert servable.restored.how == "chunked"
        sigdef = servable.signatures["serving_default"]
        ((alias, spec),) = sigdef.inputs.items()
        batch = np.random.default_rng(0).standard_normal((4, *spec.shape[1:])).astype(np.float32)
        got = servable.run("serving_default", {alias: batch})
        graph = tf.Graph()
        with tf.compat.v1.Session(graph=graph) as session:
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
            sig = meta.signature_def["serving_default"]
            names = sorted(sig.outputs)
            want = session.run(
                [sig.outputs[n].name for n in names], {sig.inputs[alias].name: batch}
            )
        for name, value in zip(names, want, strict=True):
            assert got[name].tobytes() == value.tobytes()
    finally:
        servable.unload()


def test_load_paces_between_steps(models: Path) -> None:
    with pacing.paced(_counting()) as pacer:
        servable = SavedModelLoader().load(models / "multi" / "1")
    try:
        restored = servable.restored
        assert restored is not None
        # graph import, each variable's ops, every restore unit, init ops, the one callable
        assert pacer.units == 1 + restored.tensors + restored.units + 1 + 1
        got = servable.run("serving_default", {"x": np.zeros(1, np.float32)})
        assert np.isfinite(got["y"]).all()
    finally:
        servable.unload()


@pytest.mark.parametrize(("name", "reason"), [("partitioned", "slice"), ("strings", "string")])
def test_unhandled_graphs_fall_back_and_are_right(models: Path, name: str, reason: str) -> None:
    info, _ = _same_as_tf(models / name / "1")
    assert info.how == "tf"
    assert reason in info.reason


def test_sharded_checkpoint_two_data_files(models: Path) -> None:
    path = models / "sharded" / "1"
    assert len(list((path / "variables").glob("variables.data-*-of-00002"))) == 2
    info, _ = _same_as_tf(path)
    assert info.how == "chunked"
    assert info.tensors == 2


def _copy(models: Path, tmp_path: Path) -> tuple[Path, Path, checkpoint.Bundle]:
    path = tmp_path / "1"
    shutil.copytree(models / "multi" / "1", path)
    bundle = checkpoint.read_index(path / "variables" / "variables")
    return path, bundle.data_file(0), bundle


@pytest.mark.parametrize(("key", "where"), [("big2d", 0.7), ("halves", 0.5)])
def test_a_corrupted_byte_is_data_loss(
    models: Path, tmp_path: Path, key: str, where: float
) -> None:
    path, data, bundle = _copy(models, tmp_path)
    entry = bundle.entries[key]
    raw = bytearray(data.read_bytes())
    raw[entry.offset + int(entry.size * where)] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(path)
    assert info.value.code == "DATA_LOSS"
    assert "Checksum does not match" in info.value.message
    assert key in info.value.message
    assert str(data) in info.value.message


def test_a_truncated_data_file_is_out_of_range_as_in_tf(models: Path, tmp_path: Path) -> None:
    path, data, bundle = _copy(models, tmp_path)
    entry = bundle.entries["big2d"]
    data.write_bytes(data.read_bytes()[: entry.offset + entry.size // 2])
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(path)
    assert info.value.code == "OUT_OF_RANGE"  # RestoreV2's "Read less bytes than requested"
    assert "the file is truncated" in info.value.message
    assert any(f"tensor {key} " in info.value.message for key in bundle.entries)
    assert str(data) in info.value.message


def test_a_missing_shard_is_not_found_as_in_tf(models: Path, tmp_path: Path) -> None:
    path = tmp_path / "1"
    shutil.copytree(models / "sharded" / "1", path)
    missing = path / "variables" / "variables.data-00001-of-00002"
    missing.unlink()
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(path)
    assert info.value.code == "NOT_FOUND"
    assert str(missing) in info.value.message


def test_mask_crc_is_tfs() -> None:
    # TF's crc32c_test.cc: Mask is not the identity and Unmask(Mask(x)) == x.
    crc = 0x12345678
    masked = checkpoint.mask_crc(crc)
    assert masked != crc
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    assert ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF == crc


def test_a_busy_pacer_sleeps_between_units_and_the_restore_is_still_exact(models: Path) -> None:
    """While requests are in flight (busy), each bank's callable is made as an indivisible
    unit (on app.core.pacing's idle-priority thread) and the loading thread sleeps between
    units; the variables still come out bit-identical."""
    path = models / "multi" / "1"
    pacer = pacing.Pacer(0.9, lambda: True)
    info, values = _restore_chunked(path, pacer)
    assert info.how == "chunked"
    assert pacer.idle == 1  # the one bank's callable
    assert pacer.slept > 0
    assert values == _restore_tf(path)


def test_serving_threads_run_a_busy_restores_units_and_it_is_still_exact(models: Path) -> None:
    """While requests are in flight, the units go to the threads that make model calls
    (app.core.pacing.Piggyback), in BUSY_CHUNK_BYTES pieces; the variables come out
    bit-identical. The loading thread sleeps only after building ops (its own Python work),
    not after the pieces."""
    path = models / "multi" / "1"
    pacer = pacing.Pacer(0.5, lambda: True)
    stop = threading.Event()
    serving: list[int] = []

    def serve() -> None:  # a serving thread: model calls back to back, each then after_call
        serving.append(threading.get_native_id())
        while not stop.is_set():
            time.sleep(0.0002)
            pacing.PIGGYBACK.after_call()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        info, values = _restore_chunked(path, pacer)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert info.how == "chunked"
    assert values == _restore_tf(path)
    # big2d (3 MiB) alone is 96 busy pieces, against 24 idle ones
    assert info.units > 3 * 2**20 // restore.BUSY_CHUNK_BYTES
    assert pacer.piggybacked > 0.9 * info.units
    assert pacer.slept < 0.5
