"""`--workers N`: N serving processes on one port, each with its own registry, swapping together.

The supervisor (the `hotserve` process) binds the REST socket once and starts N workers
(`python -m app.worker`), each inheriting the listening socket (the kernel spreads accepted
connections over them) and one end of a control socket pair. The gRPC port, once served, is
bound by each worker with SO_REUSEPORT (grpcio's default).

Swaps stay one-way across workers. Each worker discovers and loads versions itself; after a
version is loaded and warmed up its `WorkerGate` reports `ready` and waits. The supervisor
answers `go` to every worker once all of them are ready (so the new version becomes the default
route everywhere within one message round), or `abort` to all when one reports it `failed` or
the wait passes --worker_swap_timeout_seconds: a version some worker cannot load is served by
none. Workers report `published` with their clock; the supervisor logs the skew between the first
and the last worker. A worker that dies is restarted; versions already published are admitted
at once when it loads them again.

Control messages are JSON lines: worker -> supervisor `{"op": "ready"|"failed"|"published",
"model", "version", "at"}`, supervisor -> worker `{"op": "go"|"abort", "model", "version"}`.

Limits: a change of the default route back to a version admitted before is not gated: when the
newest version is deleted, each worker rolls back at its own next scan (an older version still
loaded under `all`/`specific`, or loaded again under `latest`, whose `ready` gets `go` at once as
a published key, the rule meant for a restarted worker catching up). Each worker downloads
object-store versions into its own cache folder (`<--model_cache_dir>/worker-<i>`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from app.metrics_merge import merge_expositions
from app.settings import Settings
from app.worker import GATHER_TIMEOUT_SECONDS

logger = logging.getLogger(__name__)

_RESTART_DELAY_SECONDS = 1.0


_BACKLOG = 2048


# ---- the supervisor -----------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    control: socket.socket
    buffer: bytes = b""


@dataclass
class _Pending:
    """One (model, version) some worker has loaded and the others have not all reported yet."""

    started: float
    ready: set[int] = field(default_factory=set)
    aborted: bool = False
    published: dict[int, float] = field(default_factory=dict)


@dataclass
class _Collect:
    """One scrape being gathered: who asked (worker, its request id) and the texts so far."""

    requester: int
    request: int
    started: float
    texts: dict[int, str] = field(default_factory=dict)


class Supervisor:
    """Owns the listening socket, the workers and the admission of versions (see the module
    docstring). Single-threaded: `run` multiplexes control sockets with a selector."""

    def __init__(self, settings: Settings, overrides: Mapping[str, str | bool]) -> None:
        self.settings = settings
        # The command line again, for the workers (environment variables they inherit).
        self.flags = [
            f"--{name}={str(value).lower() if isinstance(value, bool) else value}"
            for name, value in overrides.items()
            if name not in ("workers", "model_cache_dir")
        ]
        self.listener = _bind(settings.host, settings.rest_api_port)
        self.workers: dict[int, _Worker] = {}
        self.pending: dict[tuple[str, int], _Pending] = {}
        self.published: set[tuple[str, int]] = set()
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.collecting: dict[int, _Collect] = {}
        self._next_collect = 0

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for index in range(self.settings.workers):
                self._start(index)
            logger.info(
                "supervisor: %d workers on %s:%d",
                self.settings.workers,
                self.settings.host,
                self.listener.getsockname()[1],
            )
            while not self.stopping:
                for key, _events in self.selector.select(timeout=0.2):
                    self._read(key.data)
                self._expire()
                self._finish_collects()
                self._reap()
        finally:
            code = self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.listener.close()
        return code

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("supervisor: %s, stopping the workers", signal.Signals(signum).name)
        self.stopping = True

    def _start(self, index: int) -> None:
        mine, theirs = socket.socketpair()
        cache = self.settings.model_cache_dir / f"worker-{index}"
        args = [
            sys.executable,
            "-m",
            "app.worker",
            f"--listen-fd={self.listener.fileno()}",
            f"--control-fd={theirs.fileno()}",
            f"--index={index}",
            "--",
            *self.flags,
            f"--model_cache_dir={cache}",
        ]
        env = {**os.environ, "HOTSERVE_WORKER_INDEX": str(index)}
        proc = subprocess.Popen(args, pass_fds=(self.listener.fileno(), theirs.fileno()), env=env)
        theirs.close()
        mine.setblocking(False)
        worker = _Worker(index, proc, mine)
        self.workers[index] = worker
        self.selector.register(mine, selectors.EVENT_READ, worker)
        logger.info("supervisor: worker %d started (pid %d)", index, proc.pid)

    def _read(self, worker: _Worker) -> None:
        try:
            chunk = worker.control.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.selector.unregister(worker.control)
            return
        worker.buffer += chunk
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._handle(worker, json.loads(line))

    def _handle(self, worker: _Worker, message: dict[str, Any]) -> None:
        op = message["op"]
        if op in ("collect", "metrics"):
            self._metrics(worker, message)
            return
        key = (str(message["model"]), int(message["version"]))
        if op == "ready" and key in self.published:
            self._send(worker, "go", key)  # a restarted worker catching up
            return
        if op == "published":
            self._published(worker, key, float(message["at"]))
            return
        entry = self.pending.setdefault(key, _Pending(time.monotonic()))
        if op == "ready":
            entry.ready.add(worker.index)
            if entry.aborted:
                self._send(worker, "abort", key)
            elif entry.ready >= set(self.workers):
                self._admit(key, entry)
        elif op == "failed":
            logger.error(
                "model %s version %d: worker %d could not load it (%s); no worker serves it",
                *key,
                worker.index,
                message.get("reason", ""),
            )
            self._abort(key, entry)

    def _published(self, worker: _Worker, key: tuple[str, int], at: float) -> None:
        entry = self.pending.get(key)
        if entry is None:  # a restarted worker caught up: nothing to measure
            return
        entry.published[worker.index] = at
        if len(entry.published) == len(self.workers):
            times = entry.published.values()
            logger.info(
                "model %s version %d: the default in all %d workers; skew %.2f ms"
                " (first %.6f, last %.6f)",
                *key,
                len(self.workers),
                (max(times) - min(times)) * 1000,
                min(times),
                max(times),
            )
            del self.pending[key]

    def _metrics(self, worker: _Worker, message: dict[str, Any]) -> None:
        """A scraped worker asks for everyone's metrics; the others answer (`metrics`)."""
        if message["op"] == "collect":
            self._next_collect += 1
            others = [w for w in self.workers.values() if w.index != worker.index]
            collect = _Collect(worker.index, message["id"], time.monotonic())
            collect.texts[worker.index] = message["text"]
            self.collecting[self._next_collect] = collect
            for other in others:
                self._write(other, {"op": "collect", "id": self._next_collect})
        elif (answered := self.collecting.get(message["id"])) is not None:
            answered.texts[worker.index] = message["text"]
        self._finish_collects()

    def _finish_collects(self) -> None:
        now = time.monotonic()
        for cid, collect in list(self.collecting.items()):
            complete = set(collect.texts) >= set(self.workers)
            if complete or now - collect.started > GATHER_TIMEOUT_SECONDS:
                del self.collecting[cid]
                requester = self.workers.get(collect.requester)
                if requester is not None:
                    merged = merge_expositions(collect.texts).decode()
                    self._write(
                        requester, {"op": "collected", "id": collect.request, "text": merged}
                    )

    def _admit(self, key: tuple[str, int], entry: _Pending) -> None:
        self.published.add(key)
        for worker in self.workers.values():
            self._send(worker, "go", key)
        logger.info(
            "model %s version %d: loaded by all %d workers after %.2fs; publishing",
            *key,
            len(self.workers),
            time.monotonic() - entry.started,
        )

    def _abort(self, key: tuple[str, int], entry: _Pending) -> None:
        entry.aborted = True
        for index in entry.ready:
            self._send(self.workers[index], "abort", key)

    def _expire(self) -> None:
        now = time.monotonic()
        for key, entry in list(self.pending.items()):
            age = now - entry.started
            if entry.aborted and age > self.settings.worker_swap_timeout_seconds:
                del self.pending[key]  # forget, so a re-published version is tried afresh
            elif (
                not entry.aborted
                and key not in self.published
                and age > self.settings.worker_swap_timeout_seconds
            ):
                logger.error(
                    "model %s version %d: only workers %s loaded it within %.0fs; giving it up",
                    *key,
                    sorted(entry.ready),
                    self.settings.worker_swap_timeout_seconds,
                )
                self._abort(key, entry)
                entry.started = now

    def _reap(self) -> None:
        for index, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None or self.stopping:
                continue
            logger.error("supervisor: worker %d exited with %d; restarting it", index, code)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.control)
            worker.control.close()
            time.sleep(_RESTART_DELAY_SECONDS)
            self._start(index)

    def _send(self, worker: _Worker, op: str, key: tuple[str, int]) -> None:
        self._write(worker, {"op": op, "model": key[0], "version": key[1]})

    def _write(self, worker: _Worker, message: dict[str, Any]) -> None:
        line = json.dumps(message).encode() + b"\n"
        with contextlib.suppress(OSError):
            worker.control.setblocking(True)
            worker.control.sendall(line)
            worker.control.setblocking(False)

    def _stop_all(self) -> int:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_seconds + 30
        codes = []
        for worker in self.workers.values():
            try:
                codes.append(worker.proc.wait(max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                logger.error("supervisor: worker %d did not stop; killing it", worker.index)
                worker.proc.kill()
                codes.append(worker.proc.wait())
            worker.control.close()
        self.selector.close()
        clean = all(c in (0, -signal.SIGTERM, 128 + signal.SIGTERM) for c in codes)
        return 0 if clean else 255


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)
    return sock


def supervise(settings: Settings, overrides: Mapping[str, str | bool]) -> int:
    """Run `settings.workers` workers until SIGTERM/SIGINT; the process exit status.
    `overrides` are the command line's flags (`app.cli.ParsedFlags.overrides`)."""
    try:
        supervisor = Supervisor(settings, overrides)
    except OSError as exc:
        logger.error(
            "Failed to start server: cannot bind %s:%d: %s",
            settings.host,
            settings.rest_api_port,
            exc,
        )
        return 255
    return supervisor.run()
