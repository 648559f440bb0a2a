"""One `--workers` worker process (`python -m app.worker`): serves the app on the listening socket
the supervisor (`app.workers`) passed down, and admits versions through a `WorkerGate`.

The gate is the worker's end of the control channel (JSON lines, see `app.workers`): core's
lifecycle calls `ready` after loading a version and makes it routable only on `go`; `failed`
and `published` report to the supervisor; `gather` merges every worker's metrics for a scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from app.core.types import ServableId, VersionState
from app.errors import HotserveError

if TYPE_CHECKING:
    from app.core.registry import Registry

logger = logging.getLogger(__name__)

GATHER_TIMEOUT_SECONDS = 2.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class WorkerGate:
    """A worker's end of the control channel (the `PublishGate` of core's lifecycle).

    `run` is a task in the lifespan's task group (it reads the supervisor's answers); the other
    methods are called by model reconcilers on the same event loop. When the supervisor goes
    away the worker shuts itself down (SIGTERM to itself): it must not serve on alone.
    """

    def __init__(
        self,
        sock: socket.socket,
        render: Callable[[], bytes] = bytes,
        catch_up: Mapping[str, int] | None = None,
        catch_up_timeout: float = 600.0,
    ) -> None:
        self._sock = sock
        self._render = render
        self._catch_up = dict(catch_up or {})
        self._catch_up_timeout = catch_up_timeout
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[tuple[str, int], asyncio.Future[bool]] = {}
        self._gathers: dict[int, asyncio.Future[bytes]] = {}
        self._next_gather = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        reader, self._writer = await asyncio.open_unix_connection(
            sock=self._sock, limit=MAX_MESSAGE_BYTES
        )
        task_status.started()
        try:
            while line := await reader.readline():
                self._receive(json.loads(line))
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_result(False)
            self._waiting.clear()
        logger.error("worker: the supervisor closed the control channel; shutting down")
        os.kill(os.getpid(), signal.SIGTERM)

    def _receive(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "collect":  # another worker is being scraped: send this one's metrics
            self._write({"op": "metrics", "id": message["id"], "text": self._render().decode()})
        elif op == "collected":
            gathered = self._gathers.pop(message["id"], None)
            if gathered is not None and not gathered.done():
                gathered.set_result(message["text"].encode())
        else:
            future = self._waiting.pop((message["model"], message["version"]), None)
            if future is not None and not future.done():
                future.set_result(op == "go")

    async def gather(self, own: bytes) -> bytes:
        """Every worker's metrics merged (`app.metrics_merge`), this one's `own` included;
        just `own` when the supervisor does not answer within a scrape's patience."""
        self._next_gather += 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._gathers[self._next_gather] = future
        self._write({"op": "collect", "id": self._next_gather, "text": own.decode()})
        try:
            with anyio.fail_after(GATHER_TIMEOUT_SECONDS + 1):
                return await future
        except TimeoutError:
            logger.warning("worker: metrics of the other workers did not arrive; serving ours")
            return own
        finally:
            self._gathers.pop(self._next_gather, None)

    async def ready(self, sid: ServableId) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        key = (sid.name, sid.version)
        self._waiting[key] = future
        self._send("ready", sid)
        logger.info(
            "model %s version %d: loaded here; waiting for every worker", sid.name, sid.version
        )
        try:
            return await future
        finally:  # answered, or abandoned (superseded): a late answer finds nothing
            if self._waiting.get(key) is future:
                del self._waiting[key]

    def catch_up(self, model: str) -> int | None:
        return self._catch_up.get(model)

    async def caught_up(self, registry: Registry) -> None:
        """Return once every model serves its catch-up version or a newer one (or that version
        ended, or --worker_swap_timeout_seconds passed): the lifespan awaits this before uvicorn
        accepts on the shared socket, so a restarted worker never answers 404 for a model the
        others serve. Polls the registry's routes (cheap, on the loop thread)."""
        if not self._catch_up:
            return
        logger.info("worker: catching up with %s before accepting", self._catch_up)
        with anyio.move_on_after(self._catch_up_timeout) as scope:
            # The registry publishes routes without a change event to wait on: poll them.
            while not all(self._serves(registry, m, v) for m, v in self._catch_up.items()):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        if scope.cancelled_caught:
            logger.error("worker: did not catch up within %.0fs; accepting", self._catch_up_timeout)

    @staticmethod
    def _serves(registry: Registry, model: str, version: int) -> bool:
        route = registry.snapshot.models.get(model)
        if route is not None and any(v >= version for v in route.versions):
            return True
        try:
            return registry.status(model, version)[0].state is VersionState.END
        except HotserveError:
            return False

    def withdrawn(self, sid: ServableId) -> None:
        self._send("withdrawn", sid)

    def failed(self, sid: ServableId, reason: str) -> None:
        self._send("failed", sid, reason=reason)

    def published(self, sid: ServableId) -> None:
        self._send("published", sid)

    def _send(self, op: str, sid: ServableId, **extra: Any) -> None:
        self._write(
            {"op": op, "model": sid.name, "version": sid.version, "at": time.time(), **extra}
        )

    def _write(self, message: dict[str, Any]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(json.dumps(message).encode() + b"\n")


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one worker process: `python -m app.worker --listen-fd F --control-fd C
    --index I -- <hotserve flags>`."""
    from app.cli import build_app_or_fail, parse_args, run_server
    from app.logs import configure_logging

    parser = argparse.ArgumentParser(prog="hotserve-worker")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--catch-up", default="{}", help="JSON {model: version} (a restart)")
    parser.add_argument("flags", nargs="*")
    ns = parser.parse_args(argv)
    settings = parse_args(ns.flags)
    configure_logging(settings.log_level, settings.log_format)
    listener = socket.socket(fileno=ns.listen_fd)
    control = socket.socket(fileno=ns.control_fd)
    app = build_app_or_fail(settings)
    if app is None:
        return 255
    gate = app.state.publish_gate = WorkerGate(
        control,
        app.state.metrics.render,
        catch_up={str(m): int(v) for m, v in json.loads(ns.catch_up).items()},
        catch_up_timeout=settings.worker_swap_timeout_seconds,
    )
    app.state.metrics.gather = gate.gather
    logger.info("worker %d (pid %d) serving", ns.index, os.getpid())
    return run_server(app, settings, sockets=[listener])


if __name__ == "__main__":
    # Run the module's canonical copy, so loggers and the gate's class are `app.worker`'s.
    from app.worker import worker_main as canonical_main

    sys.exit(canonical_main())
