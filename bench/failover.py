"""`python -m bench.failover`: how long reconciles stop when the requests stream's leader dies.

On a local cluster of its own with three NATS nodes (every stream at three replicas), a watcher
and two reconcilers converge a few CRs; then, ``--kills`` times: SIGKILL the node leading the
requests stream, change one CR's size at once, and time until its Deployment has the new size
(the change's whole path: watcher, events and requests streams, a reconciler, the API server).
The same change without a kill, before each one, is the baseline. The dead node is restarted
and the cluster left to heal between kills. Prints p50 and max of both, and writes them to
``--out`` (JSON) if given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    REPO,
    create_crs,
    create_namespace,
    free_port,
    memcached,
    nats_env,
    percentile,
    process_env,
    service_command,
)
from deploy.local import cluster as local_cluster
from deploy.local.layout import Layout, block_size, free_base_port
from deploy.local.nats_cluster import NatsCluster
from deploy.local.processes import Supervisor
from memcached_operator.shared.bus.streams import REQUESTS_STREAM
from memcached_operator.shared.kube.client import DEPLOYMENT, MEMCACHED, KubeClient

NAMESPACE = "bench-failover"
CRS = 20


def log(message: str) -> None:
    print(f"[failover {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _replicas(kube: KubeClient, name: str) -> int | None:
    try:
        dep = await kube.get(DEPLOYMENT, NAMESPACE, name)
    except Exception:
        return None
    return None if dep is None else int((dep.get("spec") or {}).get("replicas") or 0)


async def _change_and_time(kube: KubeClient, name: str, size: int, timeout: float = 120) -> float:
    started = time.monotonic()
    await kube.request(
        "PATCH",
        MEMCACHED.path(NAMESPACE, name),
        body={"spec": {"size": size}},
        resource="memcacheds",
        content_type="application/merge-patch+json",
    )
    while time.monotonic() - started < timeout:
        if await _replicas(kube, name) == size:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{name} did not reach size {size} within {timeout:.0f}s")


async def _all_deployed(kube: KubeClient, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sizes = [await _replicas(kube, f"f-{i:02d}") for i in range(CRS)]
        if all(size == 1 for size in sizes):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("the CRs were not deployed")


def _heal(nats: NatsCluster, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(nats.healthy(n) for n in nats.nodes) and nats.leader_of(REQUESTS_STREAM) is not None:
            return
        time.sleep(0.5)
    raise TimeoutError("the NATS cluster did not heal")


async def measure(layout: Layout, kills: int) -> dict[str, Any]:
    nats = NatsCluster(layout)
    services = Supervisor(layout.state_dir / "failover")
    kube = await KubeClient.connect(str(layout.kubeconfig))
    try:
        for name, service, args in (
            ("watcher", "watcher", ("--namespaces", NAMESPACE)),
            ("reconciler-0", "reconciler", ()),
            ("reconciler-1", "reconciler", ()),
        ):
            env = process_env(layout.kubeconfig, **nats_env(layout, service))
            services.start(name, service_command(service, free_port(), *args), env=env, cwd=REPO)
        await create_namespace(kube, NAMESPACE)
        await create_crs(
            kube, [memcached(f"f-{i:02d}", NAMESPACE) for i in range(CRS)], concurrency=8
        )
        await _all_deployed(kube)
        baseline: list[float] = []
        failover: list[float] = []
        for k in range(kills):
            name = f"f-{k % CRS:02d}"
            baseline.append(await _change_and_time(kube, name, 2))
            leader = nats.leader_of(REQUESTS_STREAM)
            assert leader is not None
            nats.kill(leader)
            failover.append(await _change_and_time(kube, name, 3))
            log(
                f"kill {k + 1}: node {leader}; baseline {baseline[-1]:.2f}s, after the kill "
                f"{failover[-1]:.2f}s"
            )
            nats.start(leader)
            await asyncio.to_thread(_heal, nats)
            await _change_and_time(kube, name, 1)
    finally:
        await kube.close()
        for rec in services.records():
            services.stop(rec.name)

    def figures(values: list[float]) -> dict[str, float]:
        return {
            "p50_s": round(percentile(sorted(values), 50), 2),
            "max_s": round(max(values), 2),
        }

    return {
        "kills": kills,
        "change_to_deployment_without_kill": figures(baseline),
        "change_to_deployment_after_leader_kill": figures(failover),
        "samples_after_kill_s": [round(v, 2) for v in failover],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = p.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="mcop-failover-"))
    layout = Layout(state, base_port=free_base_port(block_size(3)), nodes=2, nats_nodes=3)
    try:
        local_cluster.up(layout)
        result = asyncio.run(measure(layout, args.kills))
    finally:
        local_cluster.down(layout)
        shutil.rmtree(state, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
