"""`--workers N`: N serving processes on one port, each with its own registry, swapping together.

The supervisor (the `hotserve` process) binds the REST socket once and starts N workers
(`python -m app.worker`), each inheriting the listening socket (the kernel spreads accepted
connections over them) and one end of a control socket pair. The gRPC port, once served, is
bound by each worker with SO_REUSEPORT (grpcio's default).

Swaps stay one-way across workers. Each worker discovers and loads versions itself; after a
version is loaded and warmed up its `WorkerGate` reports `ready` and waits. The supervisor
answers `go` to every waiting worker once each worker is ready or serves that version already
(so the new default route appears everywhere within one message round), or `abort` when one
reports it `failed` or the wait passes --worker_swap_timeout_seconds: a version some worker
cannot load is served by none. This holds for rollbacks too: a version served before and loaded
again (the newest deleted under `latest`) is gated like a new one, and each worker keeps serving
the deleted version until `go`. A worker waiting in the gate gives the version up (`failed`, so
no other worker waits for it) once it is superseded: no longer aspired, or a newer version due.
A worker reports `failed` too when it stops retrying a version that left its aspired set.

Workers report `published` and `withdrawn`, so the supervisor knows what each serves, and
`published` carries their clock: the supervisor logs the skew between the first and the last.
A worker that dies is restarted with `--catch-up` {model: newest version every other worker
serves}: it aspires that version besides its own scan's (even when the newest on disk is broken
and retrying), its `ready` for a version every other worker serves gets `go` at once, and it
accepts on the shared socket (and starts gRPC) only once it serves those versions (or they ended,
or --worker_swap_timeout_seconds passed), so it never answers 404 for a model the others serve.

Control messages are JSON lines: worker -> supervisor `{"op": "ready"|"failed"|"published"|
"withdrawn", "model", "version", "at"}`, supervisor -> worker `{"op": "go"|"abort", "model",
"version"}`.

Limits: under `all`/`specific` a rollback whose older version is still loaded changes no load,
only each worker's default route at its own next scan (not gated). A superseded version is given
up in every worker, also under `all` (where it stays aspired). Each worker downloads
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
    admitted: bool = False
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
        # Per worker, the versions it serves: told `go` and reported `published`, until it
        # reports `withdrawn` (or dies).
        self.serving: dict[int, set[tuple[str, int]]] = {}
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

    def _start(self, index: int, catch_up: Mapping[str, int] | None = None) -> None:
        mine, theirs = socket.socketpair()
        cache = self.settings.model_cache_dir / f"worker-{index}"
        args = [
            sys.executable,
            "-m",
            "app.worker",
            f"--listen-fd={self.listener.fileno()}",
            f"--control-fd={theirs.fileno()}",
            f"--index={index}",
            f"--catch-up={json.dumps(dict(catch_up or {}))}",
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
        self.serving[index] = set()
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
        if op == "withdrawn":
            self.serving[worker.index].discard(key)
            return
        if op == "published":
            self.serving[worker.index].add(key)
            self._published(worker, key, float(message["at"]))
            return
        others = [i for i in self.workers if i != worker.index]
        if op == "ready" and others and all(key in self.serving[i] for i in others):
            self._send(worker, "go", key)  # every other worker serves it: a restart catching up
            return
        # Anything else, a rollback to a version published before included, is gated: the
        # workers switch together once each has it loaded (or serves it already).
        entry = self.pending.setdefault(key, _Pending(time.monotonic()))
        if op == "ready":
            entry.ready.add(worker.index)
            if entry.aborted:
                self._send(worker, "abort", key)
            else:
                self._admit_if_all(key, entry)
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
        if entry.ready and set(entry.published) >= entry.ready:  # every worker told `go`
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

    def _admit_if_all(self, key: tuple[str, int], entry: _Pending) -> None:
        have = entry.ready | {i for i, keys in self.serving.items() if key in keys}
        if have >= set(self.workers):
            self._admit(key, entry)

    def _admit(self, key: tuple[str, int], entry: _Pending) -> None:
        entry.admitted = True
        for index in entry.ready:
            self._send(self.workers[index], "go", key)
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
                and not entry.admitted
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
            catch_up = self._catch_up(index)
            del self.serving[index]
            for entry in self.pending.values():
                entry.ready.discard(index)
                entry.published.pop(index, None)
            time.sleep(_RESTART_DELAY_SECONDS)
            self._start(index, catch_up)
            logger.info("supervisor: worker %d catches up with %s", index, catch_up)

    def _catch_up(self, index: int) -> dict[str, int]:
        """Per model, the newest version every other worker serves (the dead worker's own,
        when it was the only one): what its replacement must serve before it accepts."""
        others = [keys for i, keys in self.serving.items() if i != index]
        common = set.intersection(*others) if others else set(self.serving.get(index, set()))
        catch_up: dict[str, int] = {}
        for model, version in common:
            catch_up[model] = max(version, catch_up.get(model, version))
        return catch_up

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
