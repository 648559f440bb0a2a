"""Version discovery in object stores, producing the same `ScanResult` core's local scanner does.

`RemoteScanner.scan` (blocking: run it in a worker thread) lists a remote base path in one
recursive listing and decides, per integer-named version prefix:

- complete: `saved_model.pb` (or `.pbtxt`), the done marker if one is configured, and - when it
  has variables - `variables.index` plus every `data-<i>-of-<N>` shard the index names
  (`app.storage.complete`); AND the listing of the version (names, sizes, ETags) identical in two
  consecutive polls. Object stores have no events and no directory mtimes, so stability across
  polls is what tells a finished upload from a slow one.
- wanted: the model's version policy applied to the complete versions.
- found: wanted versions present in the local cache; a wanted version not cached yet is
  downloaded (`app.storage.cache`: temp folder, verified, atomic rename) during this scan. A
  download that fails verification (say, a graph with variables but no variables bundle) is
  rejected until the version's listing changes.

The error contract is core's (`app.core.source`): a failing listing, an empty one, or nothing
complete and cached yields `error` and an empty `aspired`; the registry then changes nothing.
After each scan the model's cached versions that are neither wanted nor in use (`in_use`: the
registry's versions not yet END) are evicted.

`SplitScanner` gives core's `VersionSource` one scanner for both kinds of base path: local paths
go to core's `VersionScanner`, object-store URLs to a `RemoteScanner`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.layout import saved_model_file
from app.core.scanner import ScanResult, VersionScanner, parse_version
from app.core.types import ModelConfig
from app.storage.cache import VersionCache
from app.storage.complete import INDEX, graph_needs_variables, index_shard_count, missing_parts
from app.storage.remote import filesystem, is_remote, split_url

logger = logging.getLogger(__name__)

Listing = dict[str, int]  # path relative to the version dir -> size in bytes
Fingerprint = tuple[tuple[str, int, str], ...]
_INDEX_HEAD_BYTES = 256


@dataclass(slots=True)
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: dict[int, Fingerprint] = field(default_factory=dict)  # last poll's listing per version
    found: set[int] = field(default_factory=set)  # judged complete; stays while listed
    rejected: dict[int, tuple[Fingerprint, str]] = field(default_factory=dict)
    shards: dict[tuple[int, str], int] = field(default_factory=dict)  # (version, index tag) -> N
    wanted: frozenset[int] = frozenset()
    logged: set[str] = field(default_factory=set)
    problem: str | None = None


def _tag(info: dict[str, Any]) -> str:
    """What changes when an object is rewritten: its ETag, else its modification time."""
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


class RemoteScanner:
    """Lists object-store base paths, settles versions, downloads them into `cache`.

    Blocking; scans of different models may run concurrently, scans of one model are serialized.
    `in_use(model)` (called from the scanning thread) names the versions the registry still
    holds; their cached copies are never evicted.
    """

    def __init__(
        self,
        cache: VersionCache,
        done_marker: str = "",
        in_use: Callable[[str], set[int]] = lambda _model: set(),
        fs_factory: Callable[[str], Any] = filesystem,
    ) -> None:
        self.cache = cache
        self.done_marker = done_marker
        self._in_use = in_use
        self._fs_factory = fs_factory
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], _State] = {}
        self._owners: dict[Path, tuple[str, str]] = {}  # cached version dir -> (model, base)
        self._filesystems: dict[str, Any] = {}

    def forget(self, model: str) -> None:
        with self._lock:
            for key in [k for k in self._states if k[0] == model]:
                self._states[key].wanted = frozenset()
                del self._states[key]

    def scan(self, config: ModelConfig) -> ScanResult:
        """List `config.base_path` once; download what is wanted. Never raises for I/O."""
        with self._lock:
            state = self._states.setdefault((config.name, config.base_path), _State())
        with state.lock:
            try:
                return self._scan(config, state)
            except Exception as exc:  # a store or SDK failure must never unload anything
                failure = f"cannot list {config.base_path}: {exc!r}"
                self._problem(state, config.name, logging.WARNING, failure)
                return ScanResult(config.name, error=failure)

    # ---- one scan -----------------------------------------------------------------------

    def _scan(self, config: ModelConfig, state: _State) -> ScanResult:
        protocol, root = split_url(config.base_path)
        with self._lock:  # one client per protocol: making one costs a session set-up
            fs = self._filesystems.get(protocol)
            if fs is None:
                fs = self._filesystems[protocol] = self._fs_factory(protocol)
        listing = self._list(fs, root)
        if not listing:
            error = f"no versions found under {config.base_path}"
            self._problem(state, config.name, logging.ERROR, error)
            return ScanResult(config.name, error=error)
        complete, pending = self._settle(config, state, fs, root, listing)
        state.wanted = frozenset(config.version_policy.select(complete))
        found: dict[int, Path] = {}
        model_dir = self.cache.model_dir(config.name, config.base_path)
        for version in sorted(state.wanted, reverse=True):
            path = self._fetch(
                config,
                state,
                fs,
                root=root,
                version=version,
                files=listing[version],
                model_dir=model_dir,
            )
            if isinstance(path, str):
                pending[version] = path
            else:
                found[version] = path
        self._evict_unused(config, state, model_dir)
        if not found:
            detail = ", ".join(f"{v}: {r}" for v, r in sorted(pending.items()))
            error = f"no complete version under {config.base_path} yet ({detail})"
            self._problem(state, config.name, logging.WARNING, error)
            return ScanResult(config.name, found, pending, error)
        if state.problem is not None:
            logger.info("model %s: versions found again under %s", config.name, config.base_path)
            state.problem = None
        aspired = frozenset(config.version_policy.select(set(found)))
        return ScanResult(config.name, found, pending, None, aspired)

    def _list(self, fs: Any, root: str) -> dict[int, dict[str, tuple[int, str]]]:
        """One recursive listing: version -> relative path -> (size, tag)."""
        fs.invalidate_cache(root)
        entries: dict[str, dict[str, Any]] = fs.find(root, detail=True)
        versions: dict[int, dict[str, tuple[int, str]]] = {}
        prefix = root.rstrip("/") + "/"
        for full, info in entries.items():
            name = str(full)
            if not name.startswith(prefix) or info.get("type", "file") != "file":
                continue
            top, _, rel = name[len(prefix) :].partition("/")
            version = parse_version(top)
            if version is None or not rel or rel.endswith("/"):
                continue
            versions.setdefault(version, {})[rel] = (int(info.get("size") or 0), _tag(info))
        return versions

    def _settle(
        self,
        config: ModelConfig,
        state: _State,
        fs: Any,
        root: str,
        listing: dict[int, dict[str, tuple[int, str]]],
    ) -> tuple[set[int], dict[int, str]]:
        complete: set[int] = set()
        pending: dict[int, str] = {}
        for version, files in sorted(listing.items()):
            fingerprint: Fingerprint = tuple(sorted((r, s, t) for r, (s, t) in files.items()))
            previous, state.seen[version] = state.seen.get(version), fingerprint
            if version in state.found:
                complete.add(version)
                continue
            reason = self._missing(state, fs, root, version, files)
            if reason is None and previous != fingerprint:
                reason = "settling (listing changed since the last poll)"
            rejected = state.rejected.get(version)
            if reason is None and rejected is not None and rejected[0] == fingerprint:
                reason = rejected[1]
            if reason is not None:
                pending[version] = reason
                key = f"{version}:{reason.split(' (')[0]}"
                if key not in state.logged:
                    state.logged.add(key)
                    logger.info("model %s: version %d not ready: %s", config.name, version, reason)
                continue
            logger.info("model %s: version %d is complete in the store", config.name, version)
            state.found.add(version)
            complete.add(version)
        for gone in set(state.seen) - set(listing):
            if gone in state.found:
                logger.info("model %s: version %d is no longer in the store", config.name, gone)
            state.seen.pop(gone)
            state.found.discard(gone)
            state.rejected.pop(gone, None)
        # What was learnt about versions no longer listed goes with them (a long-lived server
        # sees versions come and go for months).
        for stale in [k for k in state.shards if k[0] not in listing]:
            del state.shards[stale]
        state.logged = {k for k in state.logged if int(k.split(":")[0]) in listing}
        return complete, pending

    def _missing(
        self, state: _State, fs: Any, root: str, version: int, files: dict[str, tuple[int, str]]
    ) -> str | None:
        sizes = {rel: size for rel, (size, _tag) in files.items()}
        shards: int | None = None
        if INDEX in files:
            key = (version, files[INDEX][1] or str(files[INDEX][0]))
            if key not in state.shards:
                try:
                    head = fs.cat_file(f"{root}/{version}/{INDEX}", start=0, end=_INDEX_HEAD_BYTES)
                    state.shards[key] = index_shard_count(bytes(head))
                except (OSError, ValueError) as exc:
                    return f"variables.index unreadable ({exc})"
            shards = state.shards[key]
        return missing_parts(sizes, self.done_marker, shards)

    def _fetch(
        self,
        config: ModelConfig,
        state: _State,
        fs: Any,
        *,
        root: str,
        version: int,
        files: dict[str, tuple[int, str]],
        model_dir: Path,
    ) -> Path | str:
        """The cached folder of a wanted version (downloading it now), or why it is pending."""
        cached = self.cache.cached(model_dir, version)
        if cached is not None:
            self._owners[cached] = (config.name, config.base_path)
            return cached
        sizes = {rel: size for rel, (size, _tag) in files.items()}
        remote = f"{root}/{version}"
        logger.info(
            "model %s: downloading version %d (%d files, %d bytes) from %s",
            config.name,
            version,
            len(sizes),
            sum(sizes.values()),
            config.base_path,
        )
        try:
            path = self.cache.download(
                fs,
                remote,
                sizes,
                model_dir / str(version),
                verify=self._verify,
                evictable=self._evictable,
            )
        except ValueError as exc:  # verification: the upload is not a servable version
            reason = f"rejected ({exc})"
            logger.error("model %s: version %d %s", config.name, version, reason)
            state.rejected[version] = (state.seen[version], reason)
            state.found.discard(version)
            return reason
        except Exception as exc:
            logger.warning("model %s: version %d download failed: %r", config.name, version, exc)
            return f"download failed ({exc})"
        logger.info("model %s: version %d downloaded to %s", config.name, version, path)
        self._owners[path] = (config.name, config.base_path)
        return path

    def _verify(self, folder: Path) -> None:
        """Raise ValueError unless the downloaded `folder` is a complete SavedModel."""
        files = {
            str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()
        }
        index = folder / INDEX
        shards = (
            index_shard_count(index.read_bytes()[:_INDEX_HEAD_BYTES]) if index.is_file() else None
        )
        reason = missing_parts(files, self.done_marker, shards)
        if reason is not None:
            raise ValueError(reason)
        graph = saved_model_file(folder)
        if graph is not None and INDEX not in files and graph_needs_variables(graph.read_bytes()):
            raise ValueError("the graph has variables but the upload has no variables/")

    def _evictable(self, path: Path) -> bool:
        owner = self._owners.get(path)
        if owner is None:
            return True
        with self._lock:
            state = self._states.get(owner)
        version = parse_version(path.name)
        keep = (state.wanted if state is not None else frozenset()) | self._in_use(owner[0])
        return version not in keep

    def _evict_unused(self, config: ModelConfig, state: _State, model_dir: Path) -> None:
        """Drop cached versions of this model that are neither wanted nor held by the registry."""
        if not model_dir.is_dir():
            return
        keep = state.wanted | self._in_use(config.name)
        for child in model_dir.iterdir():
            version = parse_version(child.name)
            if version is not None and version not in keep:
                self._owners.pop(child, None)
                self.cache.evict(child)

    def _problem(self, state: _State, model: str, level: int, message: str) -> None:
        """Log a listing problem loudly once, then quietly until it changes or clears."""
        quiet = state.problem == message
        state.problem = message
        logger.log(
            logging.DEBUG if quiet else level,
            "model %s: %s; keeping what is loaded",
            model,
            message,
        )


class SplitScanner:
    """Core's `VersionScanner` for local base paths, a `RemoteScanner` for object-store URLs
    (the duck type `VersionSource` needs: `scan`, `forget`, `settle_seconds`)."""

    def __init__(self, local: VersionScanner, remote: RemoteScanner) -> None:
        self.local = local
        self.remote = remote

    @property
    def settle_seconds(self) -> float:
        return self.local.settle_seconds

    def forget(self, model: str) -> None:
        self.local.forget(model)
        self.remote.forget(model)

    def scan(self, config: ModelConfig) -> ScanResult:
        if is_remote(config.base_path):
            return self.remote.scan(config)
        return self.local.scan(config)
