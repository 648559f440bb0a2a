"""Admin actions: load / unload a version, pin / unpin the default route, set / delete labels.

Each action checks the same safety rules file-driven changes obey, then hands the model new
`Overrides` through `Registry.override` (the admin input into core, beside the version source);
the model's reconciler does the loading and unloading, as for a scan. Nothing here touches a
`ModelState` directly. Rules:
- a label is set or moved only to an AVAILABLE version (FAILED_PRECONDITION otherwise);
- unloading the last version serving a model needs `force` (FAILED_PRECONDITION otherwise), and
  a pinned version cannot be unloaded (unpin first);
- a pin to a version that is not loaded loads it first; the route follows the pin only once the
  version is AVAILABLE, and a version that fails to load drops the pin again: serving is
  untouched, the answer carries the load error;
- a version must exist on disk (found by the last scan) to be loaded or pinned.
Inputs are a model name (looked up among configured models, never used as a path) and an integer
version, so no admin input can reach a path outside the configured base paths.
All methods run on the event-loop thread.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import MappingProxyType

import anyio

from app.core.registry import Registry
from app.core.types import VersionState, VersionStatus
from app.errors import DeadlineExceeded, FailedPrecondition, NotFound

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02
DEFAULT_WAIT_SECONDS = 60.0


class AdminActions:
    """The admin API's verbs. `reload_config` re-reads models.config now (None: no config)."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        reload_config: Callable[[], Awaitable[list[str]]] | None,
    ) -> None:
        self._registry = registry
        self._reload_config = reload_config

    async def reload_config(self) -> list[str]:
        if self._reload_config is None:
            raise FailedPrecondition("No --model_config_file to reload")
        return await self._reload_config()

    async def load(self, name: str, version: int, wait: float = DEFAULT_WAIT_SECONDS) -> str:
        """Keep `version` loaded whatever the source aspires; wait until it settles."""
        reg = self._registry()
        self._on_disk(reg, name, version)
        before = reg.overrides(name)
        reg.override(  # a load lifts a rollback's withdrawal too (app.rollout.table)
            name,
            replace(
                before,
                hold=before.hold | {version},
                exclude=before.exclude - {version},
                withdrawn=before.withdrawn - {version},
            ),
        )
        state = await self._settle(reg, name, version, wait)
        if state is not VersionState.AVAILABLE:
            # Take back only this call's hold: other calls may have changed holds meanwhile.
            now = reg.overrides(name)
            added = {version} - before.hold
            reg.override(name, replace(now, hold=now.hold - added))
            raise self._load_error(reg, name, version)
        return str(state.value)

    async def unload(self, name: str, version: int, force: bool = False) -> None:
        """Keep `version` unloaded whatever the source aspires (until loaded again)."""
        reg = self._registry()
        current = reg.overrides(name)
        if current.pin == version:
            raise FailedPrecondition(f"Version {version} of model {name} is pinned; unpin it first")
        route = reg.snapshot.models.get(name)
        routed = set(route.versions) if route is not None else set()
        if version not in routed and version not in reg.on_disk(name):
            raise NotFound(f"Could not find version {version} of model {name}")
        after = replace(current, hold=current.hold - {version}, exclude=current.exclude | {version})
        # Judged by what the reconciler will do, not by the routes now: a version already being
        # unloaded still routes for a moment, and excluding the only version the source aspires
        # (one still loading, or failed) unloads the versions serving meanwhile too.
        if not force and reg.keeps_serving(name, current) and not reg.keeps_serving(name, after):
            raise FailedPrecondition(
                f"Unloading version {version} would leave no version serving model {name}; "
                "it needs force=true (or load or pin the version to keep first)"
            )
        reg.override(name, after)

    async def pin(self, name: str, version: int, wait: float = DEFAULT_WAIT_SECONDS) -> str:
        """Send requests without a version or label to `version` until unpinned. The version
        is loaded first (held) while the current default keeps serving; the pin then moves the
        route in one step."""
        reg = self._registry()
        self._on_disk(reg, name, version)
        before = reg.overrides(name)
        held = before.hold | {version}
        withdrawn = before.withdrawn - {version}  # lifts a rollback's withdrawal
        reg.override(
            name,
            replace(before, hold=held, exclude=before.exclude - {version}, withdrawn=withdrawn),
        )
        state = await self._settle(reg, name, version, wait)
        now = reg.overrides(name)
        added = held - before.hold  # this call's hold only: a load meanwhile keeps its own
        if state is not VersionState.AVAILABLE:
            reg.override(name, replace(now, hold=now.hold - added))  # serving never moved
            raise self._load_error(reg, name, version)
        reg.override(name, replace(now, pin=version, hold=now.hold - added))
        return str(state.value)

    async def unpin(self, name: str) -> int | None:
        """Back to the highest AVAILABLE version; returns the version that was pinned."""
        reg = self._registry()
        current = reg.overrides(name)
        reg.override(name, replace(current, pin=None))
        return current.pin

    async def set_label(self, name: str, label: str, version: int) -> None:
        reg = self._registry()
        route = reg.snapshot.models.get(name)
        if route is None or version not in route.versions:
            raise FailedPrecondition(
                f"Label {label} can only point at an AVAILABLE version; "
                f"version {version} of model {name} is not"
            )
        current = reg.overrides(name)
        labels = MappingProxyType({**current.labels, label: version})
        reg.override(name, replace(current, labels=labels))

    async def delete_label(self, name: str, label: str) -> None:
        reg = self._registry()
        route = reg.snapshot.models.get(name)
        current = reg.overrides(name)
        routed = route is not None and label in route.labels
        if not routed and current.labels.get(label) is None:
            raise NotFound(f"Model {name} has no label {label}")
        labels = MappingProxyType({**current.labels, label: None})
        reg.override(name, replace(current, labels=labels))

    # ---- helpers ---------------------------------------------------------------------

    @staticmethod
    def _on_disk(reg: Registry, name: str, version: int) -> None:
        route = reg.snapshot.models.get(name)
        if route is not None and version in route.versions:
            return
        if version not in reg.on_disk(name):
            raise NotFound(f"Could not find version {version} of model {name}")

    @staticmethod
    async def _settle(reg: Registry, name: str, version: int, wait: float) -> VersionState:
        """Poll until `version` is AVAILABLE (and routable) or ends with an error; the state
        reached. A version that already gave up (END with an error, not retried until its files
        change) counts as ended at once."""
        before = _status(reg, name, version)
        try:
            with anyio.fail_after(wait):
                while True:
                    route = reg.snapshot.models.get(name)
                    if route is not None and version in route.versions:
                        return VersionState.AVAILABLE
                    st = _status(reg, name, version)
                    if st is not None and st.state is VersionState.END and st.error_code != "OK":
                        return VersionState.END  # `before` included: a given-up version
                    await anyio.sleep(POLL_SECONDS)
        except TimeoutError:
            raise DeadlineExceeded(
                f"Version {version} of model {name} is not AVAILABLE after {wait:.0f}s "
                f"(was {before.state.value if before else 'unknown'}); the override stays"
            ) from None

    @staticmethod
    def _load_error(reg: Registry, name: str, version: int) -> FailedPrecondition:
        st = _status(reg, name, version)
        why = st.error_message if st is not None else "not loaded"
        return FailedPrecondition(
            f"Version {version} of model {name} failed to load: {why}; serving is unchanged"
        )


def _status(reg: Registry, name: str, version: int) -> VersionStatus | None:
    try:
        return reg.status(name, version)[0]
    except NotFound:
        return None
