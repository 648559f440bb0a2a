"""Version scanning: which complete version directories exist under one model's base path.

`VersionScanner.scan` lists one base path (blocking; call it from a worker thread) and returns a
`ScanResult`: integer-named child directories (leading zeros allowed; signed names, files,
`tmp`, `1.tmp`, `.hidden` ignored) that hold `saved_model.pb`/`.pbtxt`, the optional done
marker, and whose tree has not changed for `settle_seconds`. A version reported found once
stays found while its directory exists, so touching a loaded version never unloads it.

Changed in place: each scan also stats a found version's directory, `saved_model.pb`,
`variables/` and `variables/variables.index` (a few stats, no tree walk). When that stamp moves,
the version settles again (it stays found meanwhile, and is listed in `pending` too, so the source
rescans soon) and then gets a new `ScanResult.generations` number: the lifecycle tries a version
that failed again once it was fixed under the same number.

Safety contract: when `ScanResult.error` is set (the listing failed, or it holds no complete
version at all) `aspired` is empty and the caller must change nothing. A missing, unreadable or
emptied base path therefore never unloads a serving version.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.core.layout import SAVED_MODEL_FILES, is_saved_model_dir
from app.core.types import ModelConfig

logger = logging.getLogger(__name__)

_VERSION_NAME = re.compile(r"[0-9]+")
_MAX_VERSION = 2**63 - 1  # TF Serving parses version names as signed 64-bit integers


def parse_version(name: str) -> int | None:
    """The version number a directory name denotes, or None when it is not a version name."""
    if not _VERSION_NAME.fullmatch(name):
        return None
    number = int(name)
    return number if number <= _MAX_VERSION else None


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One listing of one model's base path (see the module docstring for the error contract)."""

    model: str
    found: dict[int, Path] = field(default_factory=dict)
    pending: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    aspired: frozenset[int] = frozenset()
    # How many times a found version's files changed in place and settled again (absent: 0).
    generations: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Fingerprint:
    files: int
    size: int
    newest_mtime: float


@dataclass(slots=True)
class _ModelState:
    """What one scanner remembers about one (model, base path) between scans."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    found: set[int] = field(default_factory=set)
    settling: dict[int, tuple[_Fingerprint, float]] = field(default_factory=dict)
    stamps: dict[int, _Stamp] = field(default_factory=dict)  # found versions, as found
    revising: set[int] = field(default_factory=set)  # found versions settling again
    generations: dict[int, int] = field(default_factory=dict)
    logged: set[str] = field(default_factory=set)
    problem: str | None = None


_Stamp = tuple[tuple[int, int, int] | None, ...]
_STAMPED = ("", *SAVED_MODEL_FILES, "variables", "variables/variables.index")


def _stamp(path: Path) -> _Stamp:
    """(inode, size, mtime_ns) of the few entries a re-export replaces: cheap enough for every
    scan of every found version, unlike `_fingerprint`'s walk."""
    out: list[tuple[int, int, int] | None] = []
    for name in _STAMPED:
        try:
            st = os.stat(path / name if name else path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _fingerprint(top: Path) -> _Fingerprint:
    """File count, total size and newest mtime (files and directories) of a tree.

    Symlinked files are followed; symlinked subdirectories are not descended (no cycles).
    """
    files = size = 0
    newest = 0.0
    for dirpath, _dirnames, filenames in os.walk(top):
        try:
            newest = max(newest, os.stat(dirpath).st_mtime)
        except OSError:
            continue
        for name in filenames:
            files += 1
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:  # vanished mid-walk: the count still records a change
                continue
            size += st.st_size
            newest = max(newest, st.st_mtime)
    return _Fingerprint(files, size, newest)


class VersionScanner:
    """Lists base paths and decides which version directories are complete.

    Blocking; call `scan` from worker threads. Scans of different models may run concurrently;
    scans of one model are serialized. State (settling fingerprints, versions already found,
    problems already logged) is kept per (model name, base path).
    """

    def __init__(
        self,
        settle_seconds: float = 1.0,
        done_marker: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settle_seconds = max(settle_seconds, 0.0)
        self.done_marker = done_marker
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], _ModelState] = {}

    def forget(self, model: str) -> None:
        """Drop everything remembered about `model` (it left the config)."""
        with self._lock:
            for key in [k for k in self._states if k[0] == model]:
                del self._states[key]

    def scan(self, config: ModelConfig) -> ScanResult:
        """List `config.base_path` once. Never raises for filesystem problems."""
        with self._lock:
            state = self._states.setdefault((config.name, config.base_path), _ModelState())
        with state.lock:
            return self._scan(config, state)

    def _scan(self, config: ModelConfig, state: _ModelState) -> ScanResult:
        base = Path(config.base_path)
        try:
            candidates = self._list(config.name, base, state)
        except OSError as exc:
            failure = f"cannot list base path {base}: {exc.strerror or exc}"
            self._problem(state, config.name, logging.WARNING, failure + "; keeping what is loaded")
            return ScanResult(config.name, error=failure)
        found, pending = self._classify(config.name, state, candidates)
        self._forget_gone(config.name, state, set(candidates))
        error = self._empty_error(
            config.name, state, base, candidates, found=found, pending=pending
        )
        generations = {v: g for v, g in state.generations.items() if v in found}
        if error is not None:
            return ScanResult(config.name, found, pending, error, generations=generations)
        if state.problem is not None:
            logger.info("model %s: versions found again under %s", config.name, base)
            state.problem = None
        aspired = frozenset(config.version_policy.select(set(found)))
        self._warn_missing_specific(config, state, found)
        return ScanResult(config.name, found, pending, None, aspired, generations)

    def _classify(
        self, model: str, state: _ModelState, candidates: dict[int, Path]
    ) -> tuple[dict[int, Path], dict[int, str]]:
        """Split candidate versions into complete ones and pending ones (with the reason)."""
        found: dict[int, Path] = {}
        pending: dict[int, str] = {}
        for version, path in sorted(candidates.items()):
            try:
                reason = self._check(model, state, version, path)
            except OSError as exc:
                reason = f"unreadable ({exc.strerror or exc})"
            if reason is None:
                found[version] = path
                continue
            if version in state.found:  # changed in place: stays found while it settles again
                found[version] = path
            pending[version] = reason
            key = f"pending:{version}:{reason.split(' (')[0]}"
            msg = "model %s: version %d not ready: %s"
            self._once(state, key, msg, model, version, reason, level=logging.INFO)
        return found, pending

    def _list(self, model: str, base: Path, state: _ModelState) -> dict[int, Path]:
        """Integer-named child directories of `base`, one path per number. Raises OSError."""
        by_number: dict[int, list[str]] = {}
        with os.scandir(base) as entries:
            for entry in entries:
                number = parse_version(entry.name)
                if number is not None and entry.is_dir():  # is_dir follows symlinks
                    by_number.setdefault(number, []).append(entry.name)
        chosen: dict[int, Path] = {}
        for number, names in by_number.items():
            # Prefer the canonical spelling, then the smallest name, so the pick is stable.
            names.sort(key=lambda n: (n != str(number), n))
            chosen[number] = base / names[0]
            if len(names) > 1:
                self._once(
                    state,
                    f"dup:{number}:{names}",
                    "model %s: %s all name version %d; using %s",
                    model,
                    ", ".join(names),
                    number,
                    names[0],
                )
        return chosen

    def _check(self, model: str, state: _ModelState, version: int, path: Path) -> str | None:
        """None when `path` is a complete version, else why it is still pending."""
        if version in state.found:
            return self._recheck(model, state, version, path)
        return self._settle(model, state, version, path)

    def _settle(self, model: str, state: _ModelState, version: int, path: Path) -> str | None:
        """None once `path` is complete and quiet (it is then found), else why it is pending."""
        if not is_saved_model_dir(path):
            state.settling.pop(version, None)
            return "no saved_model.pb"
        if self.done_marker and not (path / self.done_marker).exists():
            state.settling.pop(version, None)
            return f"waiting for marker {self.done_marker}"
        now = self._clock()
        current = _fingerprint(path)
        previous = state.settling.get(version)
        since = previous[1] if previous is not None and previous[0] == current else now
        state.settling[version] = (current, since)
        # Quiet either by mtime (old versions are ready on the first scan) or by observation
        # (mtimes can lie: clock skew on NFS, tools that preserve timestamps while copying).
        quiet = max(now - current.newest_mtime, now - since)
        if quiet < self.settle_seconds:
            return f"settling (changed {max(quiet, 0.0):.1f}s ago)"
        del state.settling[version]
        state.found.add(version)
        state.stamps[version] = _stamp(path)
        logger.info("model %s: version %d is complete at %s", model, version, path)
        return None

    def _recheck(self, model: str, state: _ModelState, version: int, path: Path) -> str | None:
        """None while a found version is unchanged; once its files change in place, why it is
        settling again, until it is complete and quiet and gets a new generation."""
        if version not in state.revising:
            if _stamp(path) == state.stamps.get(version):
                return None
            state.revising.add(version)
            logger.info("model %s: version %d changed in place; settling again", model, version)
        state.found.discard(version)  # _settle adds it back once the new files are complete
        reason = self._settle(model, state, version, path)
        if reason is None:
            state.revising.discard(version)
            state.generations[version] = state.generations.get(version, 0) + 1
            return None
        state.found.add(version)
        return f"changed in place, {reason}"

    def _forget_gone(self, model: str, state: _ModelState, present: set[int]) -> None:
        for version in sorted(state.found - present):
            logger.info("model %s: version %d is no longer on disk", model, version)
            state.found.discard(version)
            state.stamps.pop(version, None)
        state.revising &= present
        for version in set(state.settling) - present:
            del state.settling[version]

    def _empty_error(
        self,
        model: str,
        state: _ModelState,
        base: Path,
        candidates: dict[int, Path],
        *,
        found: dict[int, Path],
        pending: dict[int, str],
    ) -> str | None:
        if not candidates:
            error = f"no versions found under {base}"
            self._problem(state, model, logging.ERROR, error + "; keeping what is loaded")
            return error
        if not found:
            # Unloading the serving version while its successor is still being copied
            # would drop traffic, so "nothing complete yet" is treated like an empty listing.
            listing = ", ".join(f"{v}: {r}" for v, r in sorted(pending.items()))
            error = f"no complete version under {base} yet"
            self._problem(
                state, model, logging.WARNING, error + "; keeping what is loaded", listing
            )
            return f"{error} ({listing})"
        return None

    def _warn_missing_specific(
        self, config: ModelConfig, state: _ModelState, found: dict[int, Path]
    ) -> None:
        policy = config.version_policy
        missing = sorted(set(policy.versions) - set(found)) if policy.kind == "specific" else []
        if missing:
            msg = "model %s: specific versions %s not found under %s"
            self._once(state, f"missing:{missing}", msg, config.name, missing, config.base_path)

    def _problem(
        self, state: _ModelState, model: str, level: int, message: str, detail: str = ""
    ) -> None:
        """Log a listing problem loudly once, then quietly until it changes or clears."""
        full = f"{message} ({detail})" if detail else message
        quiet = state.problem == message
        state.problem = message
        logger.log(logging.DEBUG if quiet else level, "model %s: %s", model, full)

    def _once(
        self,
        state: _ModelState,
        key: str,
        message: str,
        *args: object,
        level: int = logging.WARNING,
    ) -> None:
        if key not in state.logged:
            state.logged.add(key)
            logger.log(level, message, *args)
