"""Operator overrides of one model: the admin API's input into core, beside the version source.

The version source says which versions *should* exist (`ScanResult.aspired`), models.config says
which labels point where. An operator may override both, and the override stays in force across
later scans and config reloads until it is taken back:

- `hold`: versions kept loaded whatever the source aspires (admin "load");
- `exclude`: versions kept unloaded whatever the source aspires (admin "unload");
- `pin`: the version requests without a version or label go to (instead of the highest
  AVAILABLE one). A pinned version is aspired too, so it stays loaded while pinned; the route only
  follows the pin once the version is AVAILABLE, so a pin to a version that fails to load leaves
  serving untouched;
- `labels`: label -> version set by the operator (None: the label is deleted), over the config's;
- `split`: a rollout (issue 11, set by app.rollout.table): `stable` and `canary` are both aspired
  (kept loaded whatever the version policy says) and the default route goes to `stable`, or is
  split between them at `weight` once both are AVAILABLE (`ModelState.route`). While a split is
  set it decides the default route, over `pin`;
- `withdrawn`: versions rolled back (app.rollout.table): taken out of the versions found on disk
  *before* the version policy picks, so under `latest` the next highest version is aspired and a
  rolled-back version does not take the route back at the next scan. A newer version published
  later is aspired as usual. Cleared by an admin load/pin of the version, or a new rollout to it.

`Overrides` is immutable: the registry replaces a model's overrides in one assignment and wakes
its reconciler, exactly as a new scan result does. The safety rules (a label moves only to an
AVAILABLE version, unloading the last serving version needs force) are checked by the caller
against the routing snapshot (app.control.actions); this module only combines the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

T = TypeVar("T")

_NO_LABELS: Mapping[str, int | None] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RouteSplit:
    """Core's view of a rollout: the default route's two arms and the canary's share `weight`
    in [0, 1] (0: stable only, e.g. while only shadowing)."""

    stable: int
    canary: int
    weight: float = 0.0


@dataclass(frozen=True, slots=True)
class Overrides:
    pin: int | None = None
    hold: frozenset[int] = frozenset()
    exclude: frozenset[int] = frozenset()
    labels: Mapping[str, int | None] = field(default_factory=lambda: _NO_LABELS)
    split: RouteSplit | None = None
    withdrawn: frozenset[int] = frozenset()

    def aspired(self, scanned: frozenset[int]) -> frozenset[int]:
        """The versions to serve: the source's, plus held, pinned and split ones, minus
        excluded."""
        wanted = scanned | self.hold
        if self.pin is not None:
            wanted |= {self.pin}
        if self.split is not None:
            wanted |= {self.split.stable, self.split.canary}
        return wanted - self.exclude

    def apply_labels(self, configured: Mapping[str, int]) -> dict[str, int]:
        """The config's labels with the operator's set and deleted ones applied."""
        labels = dict(configured)
        for label, version in self.labels.items():
            if version is None:
                labels.pop(label, None)
            else:
                labels[label] = version
        return labels

    def default(self, loaded: Mapping[int, T]) -> T | None:
        """What serves requests without a version or label: during a rollout its stable
        version (the canary while stable is not loaded); else the pinned version once loaded,
        else the highest loaded one that was not rolled back."""
        if self.split is not None:
            for v in (self.split.stable, self.split.canary):
                if v in loaded:
                    return loaded[v]
        if self.pin is not None and self.pin in loaded:
            return loaded[self.pin]
        if self.withdrawn:  # a rolled-back version leaves the route at once, before its unload
            kept = [v for v in loaded if v not in self.withdrawn]
            if kept:
                return loaded[max(kept)]
        return loaded[max(loaded)] if loaded else None

    def describe(self) -> dict[str, object]:
        """A JSON-ready view (admin API, status page)."""
        return {
            "pin": self.pin,
            "held": sorted(self.hold),
            "excluded": sorted(self.exclude),
            "labels": dict(self.labels),
            "withdrawn": sorted(self.withdrawn),
        }


NONE = Overrides()
