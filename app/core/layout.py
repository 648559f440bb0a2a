"""What makes a SavedModel directory complete: the one definition the version scanner
(`core.scanner`), the publisher (`app.publish`) and the TensorFlow loader (`runtime.saved_model`)
share. Pure file-system checks, no TensorFlow; safe from any thread.

TensorFlow's loader (`tensorflow/cc/saved_model/reader.cc`, `ReadSavedModel`) looks for
`saved_model.pb`, then `saved_model.pbtxt`, in the export directory; one of them must be a file.
Variables and assets are optional (a graph with no variables has none).
"""

from __future__ import annotations

from pathlib import Path

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")  # in the order TF looks for them


def saved_model_file(path: Path) -> Path | None:
    """The SavedModel proto TF would read in the directory `path`, or None when there is none
    (`path` missing or not a directory included). Blocking file-system calls."""
    for name in SAVED_MODEL_FILES:
        candidate = path / name
        if candidate.is_file():
            return candidate
    return None


def is_saved_model_dir(path: Path) -> bool:
    """True when `path` is a directory holding `saved_model.pb` or `saved_model.pbtxt`."""
    return saved_model_file(path) is not None
