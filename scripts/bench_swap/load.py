"""Steady :predict load from wrk pinned to its own core, with a per-request log.

`WrkLoad` runs `wrk -tN -cN -s lua/record.lua` (one keep-alive connection per wrk thread, so
the Lua hooks can pair each request with its response) until `stop()`, then `requests()` reads
the per-thread logs into numpy arrays. `plain_rate()` measures wrk without any Lua hooks at the
same concurrency, to show the logging does not limit the load.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

RECORD_LUA = Path(__file__).resolve().parent / "lua" / "record.lua"
WRK_TIMEOUT = "10s"  # wrk counts an answer slower than this as a timeout error
# wrk needs a duration; the harness stops it with SIGINT when its run is over. One hour was
# too short: 20 swaps of the 1 GiB model take ~80 minutes, and wrk ended at swap 14 of one run.
WRK_MAX_SECONDS = 7 * 24 * 3600

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Requests:
    """One row per request: send time (monotonic s), latency (s, -1 = lost), HTTP status
    (0 = lost: the connection failed before an answer), digest of the answer's first bytes
    (record.lua; 0 = none): which version answered, when versions answer differently."""

    sent: Floats
    latency: Floats
    status: npt.NDArray[np.int64]
    digest: npt.NDArray[np.int64]

    def _keep(self, keep: npt.NDArray[np.bool_]) -> Requests:
        return Requests(self.sent[keep], self.latency[keep], self.status[keep], self.digest[keep])

    def between(self, start: float, end: float) -> Requests:
        return self._keep((self.sent >= start) & (self.sent < end))

    def within(self, windows: list[tuple[float, float]]) -> Requests:
        keep = np.zeros(len(self.sent), dtype=bool)
        for start, end in windows:
            keep |= (self.sent >= start) & (self.sent < end)
        return self._keep(keep)

    @property
    def answered(self) -> Floats:
        """When each request's answer arrived (monotonic s; meaningless for lost ones)."""
        at: Floats = self.sent + self.latency
        return at

    @property
    def ok_latency(self) -> Floats:
        ok: Floats = self.latency[self.status == 200]
        return ok

    @property
    def failures(self) -> int:
        return int(np.count_nonzero(self.status != 200))


@dataclass(frozen=True)
class WrkSummary:
    requests: int
    seconds: float
    errors: dict[str, int]
    cpu_seconds: float  # wrk's own CPU time (user + system)


_SUMMARY = re.compile(r"WRK_SUMMARY (.*)")


class WrkLoad:
    """wrk posting `body_file` to `url` with `connections` connections, pinned to `cpu`."""

    def __init__(
        self,
        url: str,
        body_file: Path,
        out_dir: Path,
        connections: int,
        cpu: int,
        think_ms: int = 0,
    ) -> None:
        """`think_ms` > 0: each connection waits that long between an answer and its next
        request (record.lua's delay()), a closed loop below saturation."""
        self.prefix = out_dir / f"wrk-{int(time.time() * 1000)}"
        argv = [
            *("taskset", "-c", str(cpu), "wrk"),
            *(
                f"-t{connections}",
                f"-c{connections}",
                f"-d{WRK_MAX_SECONDS}s",
                f"--timeout={WRK_TIMEOUT}",
            ),
            *("-s", str(RECORD_LUA), url, "--", str(self.prefix), str(body_file)),
        ]
        self.started = time.monotonic()
        env = {**os.environ, "WRK_THINK_MS": str(think_ms)}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def running(self) -> bool:
        """Whether wrk is still sending requests (a harness checks it between measurements)."""
        return self.proc.poll() is None

    def stop(self) -> WrkSummary:
        """SIGINT: wrk stops, runs done() and exits, flushing the per-thread logs. Raises
        RuntimeError if wrk had already exited."""
        if not self.running():
            raise RuntimeError(f"wrk exited early: {self.proc.communicate()[0]!r}")
        cpu = self.cpu_seconds()
        self.proc.send_signal(signal.SIGINT)
        out = self.proc.communicate(timeout=60)[0].decode(errors="replace")
        m = _SUMMARY.search(out)
        if m is None:
            raise RuntimeError(f"no summary from wrk: {out}")
        fields = {k: int(v) for k, v in (kv.split("=") for kv in m[1].split())}
        requests, micros = fields.pop("requests"), fields.pop("duration_us")
        return WrkSummary(requests, micros / 1e6, fields, cpu)

    def requests(self) -> Requests:
        parts = []
        for path in sorted(self.prefix.parent.glob(self.prefix.name + "-*.tsv")):
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
            rows = rows.reshape(-1, 4) if rows.size else np.empty((0, 4))
            if path.name.endswith("-0.tsv") and len(rows) and rows[0, 2] == 0:
                rows = rows[1:]  # thread 0's pipelining probe (see record.lua)
            parts.append(rows)
        rows = np.concatenate(parts) if parts else np.empty((0, 4))
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        return Requests(
            rows[:, 0].copy(),
            rows[:, 1].copy(),
            rows[:, 2].astype(np.int64),
            rows[:, 3].astype(np.int64),
        )


def plain_rate(url: str, body_file: Path, connections: int, cpu: int, seconds: int) -> float:
    """Requests/s of `wrk -t1 -c<connections>` with a static body and no per-request Lua."""
    script = body_file.with_suffix(".plain.lua")
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = assert(io.open("{body_file}", "rb"))\nwrk.body = f:read("*a")\nf:close()\n'
    )
    argv = [
        *("taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"),
        *(f"--timeout={WRK_TIMEOUT}", "-s", str(script), url),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if m is None:
        raise RuntimeError(f"cannot parse wrk output: {out.stdout}")
    return float(m[1])
