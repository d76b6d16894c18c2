"""How each contender is started and stopped: this pipeline, the kopf and controller-runtime
peers, the floor client.

Every contender runs as real child processes (recorded by the local Supervisor, so teardown
stops exactly them), authenticates as the ``bench-operator`` user through the kubeconfig it is
given (direct, or through the latency proxy), and is confined to the scenario's namespace.
``start`` returns once the contender is ready to work; ``ports`` are the /metrics ports.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import (
    REPO,
    free_port,
    metric_sum,
    nats_env,
    process_env,
    scrape,
    service_command,
    wait_http_ok,
    wait_service_ready,
)
from bench.peers.build import ensure_built as ensure_go_peer
from deploy.local.layout import Layout
from deploy.local.processes import Record, Supervisor

KOPF_OPERATOR = REPO / "bench" / "peers" / "kopf_operator.py"


@dataclass
class Contender:
    """A set of processes doing one operator's job in one namespace."""

    supervisor: Supervisor
    kubeconfig: Path
    layout: Layout
    namespace: str
    prefix: str
    env: dict[str, str] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    def _start(self, role: str, argv: list[str], *, port: int, **extra: str) -> Record:
        name = f"{self.prefix}-{role}"
        env = process_env(self.kubeconfig, **{**self.env, **extra})
        rec = self.supervisor.start(name, argv, env=env, cwd=REPO)
        self.records[role] = rec
        self.ports[role] = port
        self.started.append(name)
        return rec

    def pids(self) -> dict[str, int]:
        return {role: rec.pid for role, rec in self.records.items()}

    def metrics(self) -> dict[str, str]:
        return {role: scrape(port) for role, port in self.ports.items()}

    def stop(self) -> None:
        for name in reversed(self.started):
            self.supervisor.stop(name, timeout=35)

    def alive(self, role: str) -> bool:
        return self.records[role].alive()

    async def start(self) -> None:
        raise NotImplementedError


@dataclass
class Pipeline(Contender):
    """This system: 1 watcher, 1 status service (unless not `status`) and `workers`
    reconciler processes."""

    workers: int = 1
    concurrency: int = 8
    status_concurrency: int = 16
    status: bool = True

    def _service(self, role: str, service: str, *args: str) -> None:
        port = free_port()
        argv = service_command(service, port, *args)
        self._start(role, argv, port=port, **nats_env(self.layout, service))

    async def start(self) -> None:
        self._service("watcher", "watcher", "--namespaces", self.namespace)
        if self.status:
            self._service("status", "status", "--concurrency", str(self.status_concurrency))
        for i in range(self.workers):
            self._service(f"reconciler-{i}", "reconciler", "--concurrency", str(self.concurrency))
        await asyncio.gather(
            *(
                wait_service_ready(port, timeout=60, alive=self.records[role].alive)
                for role, port in self.ports.items()
            )
        )


@dataclass
class KopfPeer(Contender):
    """bench/peers/kopf_operator.py under `kopf run`."""

    async def start(self) -> None:
        health = free_port()
        metrics = free_port()
        kopf = str(Path(sys.executable).parent / "kopf")
        argv = [
            kopf,
            "run",
            "--standalone",
            "--namespace",
            self.namespace,
            f"--liveness=http://127.0.0.1:{health}/healthz",
            str(KOPF_OPERATOR),
        ]
        rec = self._start("kopf", argv, port=metrics, BENCH_METRICS_PORT=str(metrics))
        await wait_http_ok(health, "/healthz", timeout=60, alive=rec.alive)
        await wait_http_ok(metrics, "/metrics", timeout=30, alive=rec.alive)


@dataclass
class GoPeer(Contender):
    """bench/peers/controller_runtime: ``replicas`` copies of the controller-runtime operator,
    under leader election when more than one (only the leader reconciles). Client QPS/burst
    are raised so that client-go's own rate limiter is not what it measures: this pipeline's
    client has none."""

    workers: int = 32
    replicas: int = 1
    qps: float = 1000.0
    burst: int = 2000

    async def start(self) -> None:
        binary = await asyncio.to_thread(ensure_go_peer)
        for i in range(self.replicas):
            metrics, probe = free_port(), free_port()
            argv = [
                str(binary),
                f"--kubeconfig={self.kubeconfig}",
                f"--namespace={self.namespace}",
                f"--metrics-bind-address=127.0.0.1:{metrics}",
                f"--health-probe-bind-address=127.0.0.1:{probe}",
                f"--max-concurrent-reconciles={self.workers}",
                f"--qps={self.qps:g}",
                f"--burst={self.burst}",
                f"--leader-elect={'true' if self.replicas > 1 else 'false'}",
            ]
            rec = self._start(f"go-{i}", argv, port=metrics)
            await wait_http_ok(probe, "/readyz", timeout=60, alive=rec.alive)
        # Ready to work once the controller has started its workers: after its caches synced,
        # and (under leader election) in the one replica that holds the Lease.
        for _ in range(600):
            started = sum(
                metric_sum(
                    text, "controller_runtime_max_concurrent_reconciles", controller="memcached"
                )
                for text in self.metrics().values()
            )
            if started:
                return
            for role in self.records:
                if not self.alive(role):
                    raise RuntimeError(f"the Go peer exited; see {self.records[role].log}")
            await asyncio.sleep(0.1)
        raise TimeoutError("the Go peer's controller did not start in 60 s")


@dataclass
class FloorClient(Contender):
    """bench/floor.py: a plain client, no queue."""

    concurrency: int = 32

    async def start(self) -> None:
        ready = self.supervisor.state_dir / f"{self.prefix}.ready"
        ready.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "bench.floor",
            "--namespace",
            self.namespace,
            "--kubeconfig",
            str(self.kubeconfig),
            "--concurrency",
            str(self.concurrency),
            "--ready-file",
            str(ready),
        ]
        rec = self._start("floor", argv, port=0)
        self.ports.pop("floor")
        for _ in range(300):
            if ready.exists():
                return
            if not rec.alive():
                raise RuntimeError(f"the floor client exited; see {rec.log}")
            await asyncio.sleep(0.2)
        raise TimeoutError("the floor client did not get ready in 60 s")
