"""Scaling the reconcilers the way users do it, on a cluster without kubelets: reconciler
processes are started and stopped during a 600-CR burst (1 -> 4 -> 2 workers), each taking one
request at a time behind 50 ms of API latency (bench/proxy.py), so that a worker waits on the
API server rather than on the machine's cores. Throughput follows the worker count (rates from
the reconciles' own outcome times, as ratios within the run), and no request is lost, run twice
at once, or dead-lettered, across a worker joining or leaving mid-burst.

As in ``bench.run --scaling``, the controller-manager is paused (SIGSTOP) during the burst: the
rollouts of 600 Deployments (ReplicaSets, pods, their status) would otherwise take the machine's
cores from the API server, and the rates would measure those cores, not the fleet. The
Deployments are deleted before it continues, so it has none to roll out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.harness import free_port
from deploy.local.layout import write_kubeconfig
from deploy.local.processes import Supervisor
from tests.conftest import Cluster
from tests.e2e.test_reconciler import (
    assert_no_overlap,
    converged,
    dead_letters,
    outcomes,
)
from tests.support import Services, create_many, http_status, memcached_manifest, wait_for

pytestmark = pytest.mark.e2e

LATENCY_MS = 50
N = 600


def _rate(times: list[datetime], start: datetime, end: datetime) -> float:
    """Reconciles per second that finished in [start, end]."""
    done = sum(1 for t in times if start <= t <= end)
    return done / (end - start).total_seconds()


def test_throughput_follows_reconcilers_started_and_stopped_during_a_burst(
    cluster: Cluster, service_procs: Services, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "bench.proxy", "--port", str(port)]
    argv += ["--upstream-port", str(cluster.layout.apiserver_port), "--latency-ms", str(LATENCY_MS)]
    proxy = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    manager = Supervisor(cluster.layout.state_dir).running("kube-controller-manager")
    assert manager is not None
    os.kill(manager.pid, signal.SIGSTOP)
    try:
        slow = write_kubeconfig(
            cluster.layout,
            tmp_path / "slow.kubeconfig",
            user="admin",
            server=f"https://127.0.0.1:{port}",
        )
        env = {"KUBECONFIG": str(slow)}
        service_procs.start("watcher", "--namespaces", namespace, name="watcher")

        def worker(i: int) -> int:
            """Start reconciler-<i>; its health port."""
            health = free_port()
            args = ("--concurrency", "1", "--health-port", str(health))
            service_procs.start("reconciler", *args, name=f"reconciler-{i}", **env)
            return health

        first = worker(0)
        wait_for(
            lambda: http_status(first, "/readyz") == 200,
            timeout=60,
            what="the first worker ready before the burst",
        )
        asyncio.run(
            create_many(
                cluster.kubeconfig, [memcached_manifest(f"mc-{i:03d}", namespace) for i in range(N)]
            )
        )
        # The scenario itself: 12 s of one worker, then 8 s of four (which, at ~30/s, leaves a
        # few hundred CRs for the two that stay).
        phases = [datetime.now(UTC)]
        time.sleep(12)
        phases.append(datetime.now(UTC))
        for i in (1, 2, 3):
            worker(i)
        time.sleep(8)
        phases.append(datetime.now(UTC))
        # Scaling down: SIGTERM, as a Deployment's scale-down sends; the runs in flight finish.
        for name in ("reconciler-2", "reconciler-3"):
            service_procs.stop(name)
        phases.append(datetime.now(UTC))
        wait_for(
            lambda: converged(cluster, namespace, N), timeout=300, what=f"{N} correct Deployments"
        )
        for name in service_procs.started:
            service_procs.stop(name)
        cluster.kubectl("delete", "deployments", "--all", "-n", namespace, "--wait=false")
    finally:
        os.kill(manager.pid, signal.SIGCONT)
        proxy.terminate()
        proxy.wait(timeout=10)

    results = outcomes(cluster, namespace)
    assert {o.key for o in results} == {f"{namespace}/mc-{i:03d}" for i in range(N)}, "lost"
    assert all(o.result == "success" for o in results)
    assert_no_overlap(results)
    assert dead_letters(cluster, namespace) == []

    times = [o.time for o in results]
    # The first seconds after a change belong to neither phase (processes start, drain).
    settle = timedelta(seconds=3)
    one = _rate(times, phases[0] + settle, phases[1])
    four = _rate(times, phases[1] + settle, phases[2])
    assert max(times) > phases[3] + 2 * settle, "the burst ended before the scale-down: raise N"
    two = _rate(times, phases[3] + settle, max(times))
    print(f"reconciles/s: 1 worker {one:.1f}, 4 workers {four:.1f}, 2 workers {two:.1f}")
    assert four >= 2.0 * one, f"4 workers {four:.1f}/s against 1 worker {one:.1f}/s"
    assert two >= 1.3 * one, f"2 workers {two:.1f}/s against 1 worker {one:.1f}/s"
    assert four >= 1.2 * two, f"4 workers {four:.1f}/s against 2 workers {two:.1f}/s"
