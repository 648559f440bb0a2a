"""Recent version events of every model: the swap history the admin API and status page show.

`EventLog.observe` is the registry's state-change callback (`Registry(observe=...)`): it runs on
the event-loop thread at every status a `ModelState` sets, so it only appends to a bounded deque.
Durations come from two hooks the lifespan wires in:
- `timed_loader(loader)`: how long the loader's `load(path)` call took (in the load thread);
- `version_ready(sid, path)`: called by the runner factory once the version is loaded and warmed,
  so warmup = ready - loaded.
From the events: AVAILABLE carries load and warmup seconds, END after UNLOADING carries the
drain + unload seconds, END with an error carries the reason. Also the per-version summary the
admin listing shows (`durations`). Threads: `_loaded_at` is written from the load thread and read
on the loop; dict item assignment is atomic under the GIL.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from app.core.servable import Loader, Servable
from app.core.types import ServableId, VersionState, VersionStatus

log = logging.getLogger(__name__)

MAX_EVENTS = 200


@dataclass(frozen=True, slots=True)
class Event:
    """One version state change. `time` is wall-clock seconds since the epoch."""

    time: float
    model: str
    version: int
    state: str
    error_code: str = "OK"
    reason: str = ""
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    unload_seconds: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


@dataclass(slots=True)
class Timings:
    """What one version's load cost, in seconds (None: not measured / not reached)."""

    started: float  # time.monotonic() at LOADING
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    unloading_since: float | None = None


class _TimedLoader:
    """The loader, with the time each `load(path)` finished recorded by path."""

    def __init__(self, inner: Loader, loaded_at: dict[Path, float]) -> None:
        self._inner = inner
        self._loaded_at = loaded_at

    def load(self, path: Path) -> Servable:
        servable = self._inner.load(path)
        self._loaded_at[path] = time.monotonic()
        return servable


class EventLog:
    """A bounded history of version events, newest last, plus each version's load timings."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.events: deque[Event] = deque(maxlen=max_events)
        self.timings: dict[tuple[str, int], Timings] = {}
        self._loaded_at: dict[Path, float] = {}
        self.changes = 0  # bumped at every event: pollers compare it to skip work

    # ---- hooks -----------------------------------------------------------------------

    def timed_loader(self, loader: Loader) -> Loader:
        return _TimedLoader(loader, self._loaded_at)

    def version_ready(self, sid: ServableId, path: Path) -> None:
        """Loaded and warmed up (the runner is being built): split load from warmup."""
        timing = self.timings.get((sid.name, sid.version))
        loaded = self._loaded_at.pop(path, None)
        if timing is None or loaded is None:
            return
        now = time.monotonic()
        timing.load_seconds = max(loaded - timing.started, 0.0)
        timing.warmup_seconds = max(now - loaded, 0.0)

    def observe(self, model: str, status: VersionStatus) -> None:
        """Registry callback (loop thread): one state change of one version."""
        key = (model, status.version)
        now = time.monotonic()
        event = Event(time.time(), model, status.version, status.state.value, status.error_code)
        if status.state is VersionState.LOADING:
            self.timings[key] = Timings(started=now)
        elif status.state is VersionState.AVAILABLE and key in self.timings:
            t = self.timings[key]
            event = _with(event, load_seconds=t.load_seconds, warmup_seconds=t.warmup_seconds)
        elif status.state is VersionState.UNLOADING and key in self.timings:
            self.timings[key].unloading_since = now
        elif status.state is VersionState.END:
            timing = self.timings.get(key)
            since = timing.unloading_since if timing is not None else None
            unload = round(now - since, 6) if since is not None else None
            event = _with(event, unload_seconds=unload, reason=status.error_message)
        self.events.append(event)
        self.changes += 1

    # ---- reads -----------------------------------------------------------------------

    def recent(self, model: str | None = None, limit: int = 50) -> list[dict[str, object]]:
        """The newest `limit` events (of `model`, or of every model), newest first."""
        picked = [e for e in reversed(self.events) if model is None or e.model == model]
        return [e.as_dict() for e in picked[:limit]]

    def durations(self, model: str, version: int) -> dict[str, float]:
        t = self.timings.get((model, version))
        if t is None:
            return {}
        out = {"load_seconds": t.load_seconds, "warmup_seconds": t.warmup_seconds}
        return {k: round(v, 6) for k, v in out.items() if v is not None}


def _with(event: Event, **changes: object) -> Event:
    fields = {**asdict(event), **changes}
    for key in ("load_seconds", "warmup_seconds", "unload_seconds"):
        value = fields.get(key)
        if isinstance(value, float):
            fields[key] = round(value, 6)
    return Event(**fields)
