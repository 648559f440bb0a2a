"""publish_version: atomic deployment of a SavedModel as a new version."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.source import VersionScanner
from app.core.types import ModelConfig
from app.publish import TMP_PREFIX, main, publish
from tests.harness import REPO


@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    """A small SavedModel-shaped tree (read-only, like the shared test data) with old mtimes."""
    src = tmp_path / "export"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"graph")
    (src / "variables" / "variables.index").write_bytes(b"index")
    for path in (src / "saved_model.pb", src / "variables" / "variables.index"):
        os.utime(path, (1000, 1000))
    for path in (src / "variables", src):
        path.chmod(0o555)
        os.utime(path, (1000, 1000))
    return src


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_publish_numbers_versions_from_the_highest(saved_model: Path, tmp_path: Path) -> None:
    base = tmp_path / "models" / "m"
    assert publish(saved_model, base) == base / "1"  # base path created on first deploy
    (base / "007").mkdir()
    (base / "tmp").mkdir()
    assert publish(saved_model, base) == base / "8"
    assert publish(saved_model, base, 3) == base / "3"
    assert tree(base / "8") == tree(saved_model)
    assert not [p for p in os.listdir(base) if p.startswith(TMP_PREFIX)]


def test_publish_refuses_an_existing_version(saved_model: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    (base / "0002").mkdir(parents=True)
    (base / "0002" / "keep").write_text("old")
    with pytest.raises(FileExistsError):
        publish(saved_model, base, 2)
    assert os.listdir(base) == ["0002"]
    assert (base / "0002" / "keep").read_text() == "old"


def test_publish_rejects_what_is_not_a_saved_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        publish(tmp_path / "empty", tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        publish(tmp_path / "missing", tmp_path / "m")


def test_publish_renames_a_complete_copy_beside_the_versions(
    saved_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "m"
    base.mkdir()
    seen: list[tuple[Path, Path]] = []
    real_rename = os.rename

    def spy(src: Path, dst: Path) -> None:
        # At the moment of the rename the version does not exist yet and the copy is whole.
        assert not Path(dst).exists()
        assert Path(src).parent == base and Path(src).name.startswith(f"{TMP_PREFIX}1-")
        assert tree(Path(src)) == tree(saved_model)
        seen.append((Path(src), Path(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", spy)
    publish(saved_model, base)
    assert [dst for _src, dst in seen] == [base / "1"]


def test_a_failed_copy_leaves_nothing_behind(
    saved_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "m"
    base.mkdir()

    def broken(src: Path, dst: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", broken)
    with pytest.raises(OSError, match="disk full"):
        publish(saved_model, base)
    assert os.listdir(base) == []


def test_published_versions_are_ready_on_the_next_scan(saved_model: Path, tmp_path: Path) -> None:
    """Timestamps are kept, so a published copy needs no settling; the marker is written too."""
    base = tmp_path / "m"
    path = publish(saved_model, base, marker="DONE")
    assert (path / "DONE").is_file()
    assert os.stat(path).st_mode & stat.S_IWUSR  # deletable/markable despite a read-only source
    scanner = VersionScanner(settle_seconds=60, done_marker="DONE")
    result = scanner.scan(ModelConfig(name="m", base_path=str(base)))
    assert result.aspired == {1} and result.pending == {}


def test_main_prints_the_path_and_reports_errors(
    saved_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "m"
    assert main([str(saved_model), str(base), "--version", "4"]) == 0
    assert capsys.readouterr().out == f"{base / '4'}\n"
    assert main([str(saved_model), str(base), "--version", "4"]) == 1
    assert "version 4 already exists" in capsys.readouterr().err


def test_script_works_from_any_directory(tmp_path: Path, testdata: Path) -> None:
    src = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    done = subprocess.run(
        [str(REPO / "scripts" / "publish_version"), str(src), "models/half"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "models/half/1\n"
    assert (tmp_path / "models" / "half" / "1" / "saved_model.pb").is_file()
    assert os.access(REPO / "scripts" / "publish_version", os.X_OK)
