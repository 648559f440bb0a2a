"""Deploy a SavedModel as a new version without the server ever seeing half a copy.

This is the supported way to deploy:

    scripts/publish_version path/to/saved_model /models/my_model            # next version
    scripts/publish_version path/to/saved_model /models/my_model --version 7
    python -m app.publish path/to/saved_model /models/my_model

The SavedModel is copied into `BASE/.hotserve-tmp-<N>-<random>` (beside the versions, so on the
same filesystem; the scanner ignores that name), every file and directory is fsynced, and the
folder is renamed to `BASE/<N>` in one atomic step. Timestamps are preserved, so the server sees
a settled version on its next scan. An existing version `N` (any spelling, e.g. `007`) is never
overwritten. Prints the published path on success.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from app.core.layout import is_saved_model_dir
from app.core.source import parse_version

TMP_PREFIX = ".hotserve-tmp-"


def _existing_versions(base: Path) -> dict[int, str]:
    """Every integer-named entry of `base` (files too: they would clash on rename)."""
    if not base.is_dir():
        return {}
    return {v: e.name for e in os.scandir(base) if (v := parse_version(e.name)) is not None}


def _finish_tree(top: Path) -> None:
    """Make every directory of `top` owner-writable (a read-only source would otherwise give
    a copy nobody but root can add a marker to or delete), then flush files and directories
    (children first) to disk."""
    for dirpath, _dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            _fsync(Path(dirpath, name), os.O_RDONLY)
        os.chmod(dirpath, os.stat(dirpath).st_mode | stat.S_IWUSR)
        _fsync(Path(dirpath), os.O_RDONLY | os.O_DIRECTORY)


def _add_marker(top: Path, marker: str) -> None:
    """Create the empty marker with the copy's timestamps, so it does not restart settling."""
    times = os.stat(top)
    (top / marker).touch()
    for path in (top / marker, top):
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    _fsync(top, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(src: Path, base: Path, version: int | None = None, *, marker: str = "") -> Path:
    """Copy the SavedModel at `src` to `base/<version>` atomically; return the published path.

    `version` defaults to the highest existing version + 1 (1 for an empty base path). `marker`,
    when given, is an empty file created inside the copy before the rename (for servers run
    with a done marker). Raises FileNotFoundError for a src that is not a SavedModel directory,
    FileExistsError when the version exists, ValueError for a negative version.
    """
    if not is_saved_model_dir(src):
        raise FileNotFoundError(f"{src} is not a SavedModel directory (no saved_model.pb)")
    base.mkdir(parents=True, exist_ok=True)
    existing = _existing_versions(base)
    if version is None:
        version = max(existing, default=0) + 1
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    target = base / str(version)
    tmp = base / f"{TMP_PREFIX}{version}-{secrets.token_hex(4)}"
    try:
        _check_free(base, version)
        shutil.copytree(src, tmp, symlinks=False)
        _finish_tree(tmp)
        if marker:
            _add_marker(tmp, marker)
        _check_free(base, version)
        # rename(2) replaces an empty directory; a non-empty one makes it fail, which is
        # what a concurrent publisher of the same number would have created.
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(base, os.O_RDONLY | os.O_DIRECTORY)
    return target


def _check_free(base: Path, version: int) -> None:
    taken = _existing_versions(base).get(version)
    if taken is not None:
        raise FileExistsError(f"version {version} already exists: {base / taken}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (`python -m app.publish SRC BASE_PATH [--version N] [--marker NAME]`)."""
    parser = argparse.ArgumentParser(
        prog="publish_version",
        description="Atomically publish a SavedModel as a new version under a model base path.",
    )
    parser.add_argument("src", type=Path, help="SavedModel directory to publish")
    parser.add_argument("base_path", type=Path, help="the model's base path")
    parser.add_argument("--version", type=int, default=None, help="default: highest + 1")
    parser.add_argument("--marker", default="", help="also create this done-marker file")
    args = parser.parse_args(argv)
    try:
        path = publish(args.src, args.base_path, args.version, marker=args.marker)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"publish_version: error: {exc}\n")
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
