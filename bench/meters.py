"""What a contender's processes cost while a scenario runs: resident memory sampled over time
(:class:`RssPoller`) and CPU seconds between two readings (:class:`CpuMeter`), read from /proc
for each process and its children; messages through nats-server (:class:`NatsTraffic`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def _rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (kopf run is one process; this guards against wrappers)."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out.extend(process_tree(int(child)))
    return out


@dataclass
class RssPoller:
    """Peak resident memory (MB) per named process, polled from /proc."""

    pids: dict[str, int]
    interval: float = 0.25
    peak_kb: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, pid in self.pids.items():
            kb = max(_rss_kb(pid), _rss_kb(pid, "VmHWM"))
            self.peak_kb[name] = max(self.peak_kb.get(name, 0), kb)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, float]:
        self.sample()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return {name: round(kb / 1024, 1) for name, kb in self.peak_kb.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (0 when it is gone), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU seconds each named process spent between :meth:`start` and :meth:`stop`.

    On a 2-core machine shared by the control plane, NATS and the contender, where the CPU
    goes explains the wall-clock figures better than any of them alone.
    """

    pids: dict[str, int]
    _start: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {
            name: round(cpu_seconds(pid) - self._start.get(name, 0.0), 2)
            for name, pid in self.pids.items()
        }


_TRAFFIC_FIELDS = ("in_msgs", "out_msgs", "in_bytes", "out_bytes")


def nats_varz(monitor_ports: list[int], wait: float = 10.0) -> dict[str, int]:
    """nats-server's own message and byte counters (``/varz``), summed over the nodes. A node
    whose monitor does not answer within ``wait`` seconds is an error naming the port and the
    cause: a zero in its place would read as "no traffic"."""
    totals = dict.fromkeys(_TRAFFIC_FIELDS, 0)
    for port in monitor_ports:
        varz = _read_varz(port, wait)
        for name in _TRAFFIC_FIELDS:
            totals[name] += int(varz.get(name) or 0)
    return totals


def _read_varz(port: int, wait: float) -> dict[str, object]:
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as resp:
                varz = json.loads(resp.read())
            if isinstance(varz, dict):
                return varz
            failure = f"not a JSON object: {str(varz)[:80]}"
        except (OSError, ValueError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise RuntimeError(f"nats-server monitor on port {port} unreadable: {failure}")
        time.sleep(0.2)


@dataclass
class NatsTraffic:
    """Messages and bytes through nats-server between :meth:`start` and :meth:`stop`: every
    publish, acknowledgement, API request and delivery is one message in or out, so this counts
    the hops a contender's pipeline makes per CR (nats-server's CPU follows it)."""

    monitor_ports: list[int]
    _start: dict[str, int] = field(default_factory=dict)

    def start(self) -> None:
        self._start = nats_varz(self.monitor_ports)

    def stop(self) -> dict[str, int]:
        end = nats_varz(self.monitor_ports)
        return {name: end[name] - self._start.get(name, 0) for name in _TRAFFIC_FIELDS}
