"""The NATS faults of the chaos runner's cluster mode (`python -m chaos.run --nats-nodes 3`).

One node at a time, so the cluster keeps its quorum (losing two of three is a different
promise, shown by tests/e2e/test_nats_cluster.py): every ``kill_every`` seconds a random node is
SIGKILLed and restarted; once, a node is hung (SIGSTOP) for longer than the consumers' idle
heartbeat and JetStream's leader election timeout, then resumed (SIGCONT); once the current
meta-leader is killed, and once the leader of the requests stream. Each fault waits until every
node is healthy again (caught up) before the next. Every fault is recorded with its time, for
the report.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from deploy.local.layout import Layout
from deploy.local.nats_cluster import NatsCluster
from memcached_operator.shared.bus.streams import REQUESTS_STREAM

# Longer than the consumers' idle heartbeat (2 s) and JetStream's election timeout (~4-9 s).
HANG_SECONDS = 12.0
HEALTHY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Fault:
    at: float  # seconds from the start of the chaos
    what: str

    def line(self) -> str:
        return f"  t={self.at:6.1f}s  {self.what}"


class NatsFaults:
    """Injects the faults into the nodes of ``layout``'s NATS cluster and records them."""

    def __init__(
        self, layout: Layout, *, rng: random.Random, log: Callable[[str], None] = print
    ) -> None:
        self.nats = NatsCluster(layout)
        self.rng = rng
        self.log = log
        self.faults: list[Fault] = []
        self.started = time.monotonic()

    def _record(self, what: str) -> None:
        fault = Fault(round(time.monotonic() - self.started, 1), what)
        self.faults.append(fault)
        self.log(f"nats fault at t={fault.at}s: {what}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while time.monotonic() < deadline:
            if all(self.nats.healthy(n) for n in self.nats.nodes):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the NATS nodes were not all healthy within {HEALTHY_TIMEOUT:.0f}s")

    def kill_and_restart(self, node: int, why: str) -> None:
        self._record(f"SIGKILL nats node {node} ({why})")
        self.nats.kill(node)
        time.sleep(2)  # long enough for clients to notice and move
        self.nats.start(node)
        self._record(f"restarted nats node {node}")
        self._wait_healthy()

    def hang(self, node: int) -> None:
        self._record(f"SIGSTOP nats node {node} for {HANG_SECONDS:.0f}s (a hung node)")
        self.nats.signal(node, signal.SIGSTOP)
        try:
            time.sleep(HANG_SECONDS)
        finally:
            self.nats.signal(node, signal.SIGCONT)
        self._record(f"SIGCONT nats node {node}")
        self._wait_healthy()

    async def run(self, *, duration: float, kill_every: float) -> None:
        """Faults until ``duration`` seconds from now: the random kills, and at 30 %, 50 % and
        70 % of it the hang, the meta-leader's kill and the requests leader's kill."""
        self.started = start = time.monotonic()
        planned = {0.3: "hang", 0.5: "meta-leader", 0.7: "requests-leader"}
        next_kill = start + kill_every
        while time.monotonic() - start < duration:
            await asyncio.sleep(0.5)
            elapsed = (time.monotonic() - start) / duration
            due = [at for at in planned if elapsed >= at]
            if due:
                what = planned.pop(min(due))
                await asyncio.to_thread(self._planned, what)
                next_kill = time.monotonic() + kill_every
            elif time.monotonic() >= next_kill:
                node = self.rng.choice(list(self.nats.nodes))
                await asyncio.to_thread(self.kill_and_restart, node, "random")
                next_kill = time.monotonic() + kill_every
        for what in sorted(planned):  # a short run still injects each planned fault
            await asyncio.to_thread(self._planned, planned[what])

    def _planned(self, what: str) -> None:
        if what == "hang":
            self.hang(self.rng.choice(list(self.nats.nodes)))
            return
        if what == "meta-leader":
            node = self.nats.meta_leader()
        else:
            node = self.nats.leader_of(REQUESTS_STREAM)
        if node is None:
            self._record(f"no {what} found; killing a random node instead")
            node = self.rng.choice(list(self.nats.nodes))
        self.kill_and_restart(node, what)
