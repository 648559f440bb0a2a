"""`app.core.layout` is the one definition of a complete SavedModel directory; the version
scanner and the publisher both follow it (the TensorFlow loader's NOT_FOUND is tested in
tests/runtime/test_saved_model.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.layout import SAVED_MODEL_FILES, is_saved_model_dir, saved_model_file
from app.core.source import VersionScanner
from app.core.types import ModelConfig
from app.publish import publish


def _pb(d: Path) -> None:
    (d / "saved_model.pb").write_bytes(b"x")


def _pbtxt(d: Path) -> None:
    (d / "saved_model.pbtxt").write_text("x")


def _both(d: Path) -> None:
    _pb(d)
    _pbtxt(d)


def _variables_only(d: Path) -> None:
    (d / "variables").mkdir()
    (d / "variables" / "variables.index").write_bytes(b"x")


def _pb_is_a_directory(d: Path) -> None:
    (d / "saved_model.pb").mkdir()


LAYOUTS: dict[str, tuple[Callable[[Path], None], str | None]] = {
    "pb": (_pb, "saved_model.pb"),
    "pbtxt": (_pbtxt, "saved_model.pbtxt"),
    "both: pb first, as TF reads it": (_both, "saved_model.pb"),
    "variables only": (_variables_only, None),
    "saved_model.pb is a directory": (_pb_is_a_directory, None),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scanner_and_publisher_agree_with_the_definition(layout: str, tmp_path: Path) -> None:
    make, expected = LAYOUTS[layout]
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    found = saved_model_file(src)
    assert (found.name if found else None) == expected
    complete = expected is not None
    assert is_saved_model_dir(src) is complete

    base = tmp_path / "base"
    (base / "1").mkdir(parents=True)
    make(base / "1")
    result = VersionScanner(settle_seconds=0).scan(ModelConfig(name="m", base_path=str(base)))
    assert (1 in result.found) is complete

    if complete:
        assert publish(src, tmp_path / "published") == tmp_path / "published" / "1"
    else:
        with pytest.raises(FileNotFoundError, match="is not a SavedModel directory"):
            publish(src, tmp_path / "published")


def test_a_missing_or_plain_file_path_is_not_a_saved_model(tmp_path: Path) -> None:
    assert saved_model_file(tmp_path / "missing") is None
    (tmp_path / "file").write_text("x")
    assert not is_saved_model_dir(tmp_path / "file")
    assert SAVED_MODEL_FILES == ("saved_model.pb", "saved_model.pbtxt")
