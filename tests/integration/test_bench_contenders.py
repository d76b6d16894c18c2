"""The bench's API floor and kopf peer write what this operator writes: for each new CR the
Deployment, the headless Service and, from two pods, the PodDisruptionBudget, built by the
reconciler's own functions (the kopf peer also deletes a budget the CR no longer wants); and
the bench's Observer calls a CR converged only once every one of them is as desired. Against
the session's real API server, each contender as its own process, as the bench runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bench.harness import Observer, create_crs, memcached
from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.kube.client import DEPLOYMENT, MEMCACHED, PDB, SERVICE, KubeClient
from tests.conftest import Cluster, free_port
from tests.support import await_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def running(argv: list[str], ready: Callable[[], bool], **env: str) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO), **env}
    )
    try:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(ready):
            if proc.returncode is not None:
                raise AssertionError((await proc.communicate())[1].decode())
            assert time.monotonic() < deadline, f"{argv[:3]} did not get ready"
            await asyncio.sleep(0.3)
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.communicate(), timeout=30)


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except OSError:
        return False


async def converges(kube: KubeClient, namespace: str) -> Observer:
    """Two CRs (one pod, two pods) created; every object of each as the reconciler wants it."""
    observer = Observer(kube, namespace, 2)
    await observer.start()
    try:
        objs = [memcached("single", namespace, size=1), memcached("pair", namespace, size=2)]
        await create_crs(kube, objs, concurrency=2, on_created=observer.created)
        assert await observer.wait(timeout=60, need_available=False), (
            observer.deployment_ok,
            observer.objects_ok,
        )
    finally:
        await observer.stop()
    assert set(observer.objects_ok) == {"single", "pair"}
    for name in ("single", "pair"):
        cr = Memcached.from_api(observer.crs[name])
        deployment = await kube.get(DEPLOYMENT, namespace, name)
        service = await kube.get(SERVICE, namespace, name)
        pdb = await kube.get(PDB, namespace, name)
        assert deployment is not None and matches(deployment, desired_deployment(cr))
        assert service is not None and matches(service, desired_service(cr))
        want_pdb = desired_pdb(cr)
        if want_pdb is None:
            assert pdb is None
        else:
            assert pdb is not None and matches(pdb, want_pdb)
        # Not converged before its last object was there.
        assert observer.objects_ok[name] >= observer.deployment_ok[name]
    return observer


async def test_the_floor_applies_every_object_the_operator_owns(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ready = tmp_path / "floor.ready"
    argv = [
        sys.executable, "-m", "bench.floor", "--namespace", namespace,
        "--kubeconfig", cluster.kubeconfig, "--ready-file", str(ready),
    ]  # fmt: skip
    kube = await KubeClient.connect(cluster.kubeconfig)
    try:
        async with running(argv, ready.exists):
            await converges(kube, namespace)
    finally:
        await kube.close()


async def test_the_kopf_peer_applies_every_object_and_deletes_an_unwanted_budget(
    cluster: Cluster, namespace: str
) -> None:
    health = free_port()
    argv = [
        str(Path(sys.executable).parent / "kopf"), "run", "--standalone",
        "--namespace", namespace, f"--liveness=http://127.0.0.1:{health}/healthz",
        str(REPO / "bench" / "peers" / "kopf_operator.py"),
    ]  # fmt: skip
    kube = await KubeClient.connect(cluster.kubeconfig)
    try:
        async with running(argv, lambda: answers(health), KUBECONFIG=cluster.kubeconfig):
            await converges(kube, namespace)
            await kube.request(
                "PATCH",
                MEMCACHED.path(namespace, "pair"),
                body={"spec": {"size": 1}},
                content_type="application/merge-patch+json",
                resource="memcacheds",
            )

            async def budget_gone() -> bool:
                return await kube.get(PDB, namespace, "pair") is None

            await await_for(budget_gone, timeout=60, what="the kopf peer to delete the PDB")
    finally:
        await kube.close()
