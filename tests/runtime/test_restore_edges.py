"""Edge cases of the chunked restore (app.runtime.restore) against TF's own restore, on the
models of tests/runtime/restore_edge_models.py: every numeric dtype, many banks, variables of
unknown shape, saveables (hash tables), damaged or half-copied versions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from app import errors
from app.core import pacing
from app.runtime.saved_model import SavedModelLoader
from tests.runtime.test_restore import _same_as_tf

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def edge_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("restore_edge_models")
    subprocess.run(
        [sys.executable, str(HERE / "restore_edge_models.py"), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_every_numeric_dtype_restores_in_units_like_tf(edge_models: Path) -> None:
    info, units = _same_as_tf(edge_models / "dtypes" / "1")
    assert info.how == "chunked", info.reason
    assert info.tensors == 24
    assert units > 24


def test_many_variables_in_several_banks_like_tf(edge_models: Path) -> None:
    info, _ = _same_as_tf(edge_models / "many" / "1")
    assert info.how == "chunked", info.reason
    assert info.tensors == 150


@pytest.mark.parametrize("name", ["unknown_shape", "tf2_unknown_shape"])
def test_a_variable_of_unknown_shape_restores_like_tf(edge_models: Path, name: str) -> None:
    info, _ = _same_as_tf(edge_models / name / "1")
    assert info.how == "tf" and "static shape" in info.reason
    servable = SavedModelLoader().load(edge_models / name / "1")
    servable.unload()


@pytest.mark.parametrize("name", ["table", "tf2_table"])
def test_a_hash_table_falls_back_to_tfs_restore(edge_models: Path, name: str) -> None:
    info, _ = _same_as_tf(edge_models / name / "1")
    assert info.how == "tf"
    servable = SavedModelLoader().load(edge_models / name / "1")
    try:
        out = servable.run("serving_default", {"x": tf.constant([0.0]).numpy()})
        assert out["y"].shape == (1,)
    finally:
        servable.unload()


def _tf_load_error(path: Path) -> tf.errors.OpError | Exception:
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        try:
            tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        except Exception as exc:
            return exc
    raise AssertionError("TF loaded a damaged version")


def test_a_missing_data_file_fails_like_tf(edge_models: Path, tmp_path: Path) -> None:
    path = tmp_path / "1"
    shutil.copytree(edge_models / "many" / "1", path)
    (path / "variables" / "variables.data-00000-of-00001").unlink()
    expected = _tf_load_error(path)
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(path)
    assert isinstance(expected, tf.errors.OpError)
    assert info.value.code == errors.code_name(expected.error_code)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.97])
def test_a_truncated_index_fails_like_tf(edge_models: Path, tmp_path: Path, keep: float) -> None:
    path = tmp_path / "1"
    shutil.copytree(edge_models / "many" / "1", path)
    index = path / "variables" / "variables.index"
    raw = index.read_bytes()
    index.write_bytes(raw[: int(len(raw) * keep)])
    expected = _tf_load_error(path)
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(path)
    assert isinstance(expected, tf.errors.OpError), expected
    assert info.value.code == errors.code_name(expected.error_code), expected.message


def test_a_garbage_index_fails_like_tf(edge_models: Path, tmp_path: Path) -> None:
    path = tmp_path / "1"
    shutil.copytree(edge_models / "many" / "1", path)
    index = path / "variables" / "variables.index"
    index.write_bytes(bytes(range(256)) * 4)
    expected = _tf_load_error(path)
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(path)
    assert isinstance(expected, tf.errors.OpError)
    assert info.value.code == errors.code_name(expected.error_code)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_a_truncated_data_file_fails_like_tf(
    edge_models: Path, tmp_path: Path, keep: float
) -> None:
    path = tmp_path / "1"
    shutil.copytree(edge_models / "dtypes" / "1", path)
    data = path / "variables" / "variables.data-00000-of-00001"
    raw = data.read_bytes()
    data.write_bytes(raw[: int(len(raw) * keep)])
    expected = _tf_load_error(path)
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(path)
    assert isinstance(expected, tf.errors.OpError)
    assert info.value.code == errors.code_name(expected.error_code), expected.message


def _tf_answer(path: Path, x: np.ndarray) -> np.ndarray:
    """`y` for `x` from the model as TF's loader loads it (restore and main op)."""
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        sig = meta.signature_def["serving_default"]
        return np.asarray(session.run(sig.outputs["y"].name, {sig.inputs["x"].name: x}))


def test_a_custom_saver_of_renamed_subset_restores_like_tf(edge_models: Path) -> None:
    """Only the saver's two variables are restored (in units); the main op initializes the
    third; the answer is TF's to the bit."""
    path = edge_models / "custom_saver" / "1"
    servable = SavedModelLoader().load(path)
    try:
        assert servable.restored is not None
        assert servable.restored.how == "chunked", servable.restored.reason
        assert servable.restored.tensors == 2
        x = np.array([0.0, 1.0], np.float32)
        got = servable.run("serving_default", {"x": x})["y"]
        assert np.asarray(got).tobytes() == _tf_answer(path, x).tobytes()
    finally:
        servable.unload()


@pytest.mark.parametrize("name", ["table", "tf2_table", "custom_saver", "tf2_unknown_shape"])
def test_a_busy_paced_load_answers_like_tf(edge_models: Path, name: str) -> None:
    """While requests are in flight every indivisible step (graph import, TF's fallback
    restore, the init ops, each callable) runs on app.core.pacing's idle thread: the answer is
    still TF's to the bit."""
    path = edge_models / name / "1"
    pacer = pacing.Pacer(0.9, lambda: True)
    with pacing.paced(pacer):
        servable = SavedModelLoader().load(path)
    try:
        assert pacer.idle >= 3  # import, restore or bank callable, init ops
        x = np.array([0.0, 2.0], np.float32)
        got = servable.run("serving_default", {"x": x})["y"]
        assert np.asarray(got).tobytes() == _tf_answer(path, x).tobytes()
    finally:
        servable.unload()


def _zero_data(path: Path) -> None:
    """A data file of the right length holding zeros (a pre-allocated, half-copied file)."""
    data = path / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(bytes(data.stat().st_size))


def _no_index(path: Path) -> None:
    (path / "variables" / "variables.index").unlink()


def _other_index(path: Path) -> None:
    """The index of another model beside this one's data (a mixed-up copy)."""
    other = path.parents[1] / "dtypes" / "1" / "variables" / "variables.index"
    shutil.copy(other, path / "variables" / "variables.index")


@pytest.mark.parametrize("damage", [_zero_data, _no_index, _other_index])
def test_a_half_copied_version_fails_like_tf(
    edge_models: Path, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """Never zeros or an uninitialized buffer served: the load fails with TF's code."""
    root = tmp_path / "m"
    shutil.copytree(edge_models / "many", root / "many")
    shutil.copytree(edge_models / "dtypes", root / "dtypes")
    path = root / "many" / "1"
    damage(path)
    expected = _tf_load_error(path)
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(path)
    if isinstance(expected, tf.errors.OpError):
        assert info.value.code == errors.code_name(expected.error_code), expected.message
    else:  # TF's ValueError for a missing checkpoint: hotserve's DATA_LOSS, as before
        assert isinstance(expected, ValueError), expected
        assert info.value.code == "DATA_LOSS"
