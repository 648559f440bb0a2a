"""Polls `--rollout_config_file` and applies what changed to the rollout table (issue 11).

Every `--rollout_config_poll_wait_seconds` the file is read and checked whole in a worker thread
(`app.rollout.config.read_file`). A bad file (unreadable, bad JSON/TOML, a field that does not
check) changes nothing: the error is logged once per distinct message and the previous rollouts
stay, as TF Serving keeps its models.config on a bad reload. A good file is applied entry by
entry, only where an entry differs from the one last applied, so a rollout the controller (or an
operator) moved since is not reset at every read:
- a changed or new `rollout` entry -> `RolloutTable.apply` (start, live change, or end it with
  phase promoted / rolled_back). Its stable version need not be AVAILABLE yet (at startup no
  version is): both versions are aspired from then on, and until stable is AVAILABLE the default
  route goes to the canary (or follows the version policy while neither is). An entry that
  cannot apply yet (a version not on disk yet, a label not set yet) is logged and tried again
  at the next read;
- a `rollout` entry removed from the file -> `RolloutTable.clear`: the default route returns to
  the version policy (TF Serving's behaviour);
- `policy` entries replace the table's policies (read by the controller).
Runs as a lifespan task on the event-loop thread; only the file read goes to a thread.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import anyio
from anyio import to_thread

from app.errors import ConfigError, HotserveError, NotFound
from app.rollout.config import RolloutBody, RolloutFile, read_file
from app.rollout.table import RolloutTable

log = logging.getLogger(__name__)


class RolloutFileSource:
    def __init__(self, path: Path, table: RolloutTable, wait_seconds: float) -> None:
        self._path = path
        self._table = table
        self._wait = wait_seconds
        self._applied: dict[str, RolloutBody] = {}
        self._policies: set[str] = set()
        self._last_error = ""
        self._pending_errors: dict[str, str] = {}

    def forget(self, model: str) -> None:
        """Model `model` left the configuration (its rollout with it): apply its entry again
        when it comes back."""
        self._applied.pop(model, None)
        self._pending_errors.pop(model, None)

    async def run(self) -> None:
        """Read now, then every `wait_seconds`, until cancelled."""
        while True:
            await self.read_once()
            await anyio.sleep(self._wait)

    async def read_once(self) -> None:
        try:
            parsed = await to_thread.run_sync(read_file, self._path)
        except ConfigError as exc:
            if exc.message != self._last_error:
                log.error("%s; keeping the previous rollouts", exc.message)
                self._last_error = exc.message
            return
        if self._last_error:
            log.info("rollout file %s reads again", self._path)
            self._last_error = ""
        self.apply(parsed)

    def apply(self, parsed: RolloutFile) -> None:
        """Apply what changed since the last good read (loop thread)."""
        for name, body in parsed.rollouts.items():
            if self._applied.get(name) == body:
                continue
            try:
                self._table.apply(name, body, source="file", stable_loading=True)
            except HotserveError as exc:
                if self._pending_errors.get(name) != exc.message:
                    log.warning(
                        "rollout file: model %s not applied (tried again at the next read): %s",
                        name,
                        exc.message,
                    )
                    self._pending_errors[name] = exc.message
                continue
            self._pending_errors.pop(name, None)
            self._applied[name] = body
        for name in [n for n in self._applied if n not in parsed.rollouts]:
            del self._applied[name]
            with contextlib.suppress(NotFound):  # already cleared (admin API)
                self._table.clear(name, source="file")
        for name in self._policies - parsed.policies.keys():
            self._table.set_policy(None, name)
        for name, policy in parsed.policies.items():
            if self._table.policies.get(name) != policy:
                self._table.set_policy(policy, name)
                log.info("rollout file: model %s on_publish=%s", name, policy.on_publish)
        self._policies = set(parsed.policies)
