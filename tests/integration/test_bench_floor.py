"""The bench's API floor writes what this operator writes: for each new CR the Deployment, the
headless Service and, from two pods, the PodDisruptionBudget, built by the reconciler's own
functions; and the bench's Observer calls a CR converged only once every one of them is as
desired. Against the session's real API server, the floor as its own process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness import Observer, create_crs, memcached
from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.kube.client import DEPLOYMENT, PDB, SERVICE, KubeClient
from tests.conftest import Cluster

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


async def test_the_floor_applies_every_object_the_operator_owns(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ready = tmp_path / "floor.ready"
    floor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.floor", "--namespace", namespace,
        "--kubeconfig", cluster.kubeconfig, "--ready-file", str(ready),
        cwd=REPO,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    kube = await KubeClient.connect(cluster.kubeconfig)
    observer = Observer(kube, namespace, 2)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if floor.returncode is not None:
                raise AssertionError((await floor.communicate())[1].decode())
            assert time.monotonic() < deadline, "the floor did not get ready"
            await asyncio.sleep(0.2)
        await observer.start()
        objs = [memcached("single", namespace, size=1), memcached("pair", namespace, size=2)]
        await create_crs(kube, objs, concurrency=2, on_created=observer.created)
        assert await observer.wait(timeout=60, need_available=False), (
            observer.deployment_ok,
            observer.objects_ok,
        )
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
    finally:
        await observer.stop()
        await kube.close()
        if floor.returncode is None:
            floor.terminate()
        await asyncio.wait_for(floor.communicate(), timeout=30)
