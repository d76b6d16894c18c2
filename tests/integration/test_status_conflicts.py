"""Two status replicas refreshing one CR at once: the status service holds no lease on the CR
(its queue keeps runs apart only within a process), so each write is conditional on the
resourceVersion its fold started from. Real API server; the two replicas are two refreshers
in this process, each with its own memory, folding what a lagging stream showed them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.kube.client import MEMCACHED, KubeClient
from memcached_operator.status.recorder import EventRecorder
from memcached_operator.status.service import StatusRefresher
from tests.conftest import Cluster

pytestmark = pytest.mark.integration


def _conflicts() -> float:
    return REGISTRY.get_sample_value("mcop_status_write_conflicts_total") or 0.0


def _create_cr(cluster: Cluster, namespace: str) -> ObjectKey:
    cr = {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {"name": "cache", "namespace": namespace},
        "spec": {"size": 1},
    }
    cluster.kubectl("create", "-f", "-", input_=json.dumps(cr))
    return ObjectKey(namespace, "cache")


def _transition_times(cr: dict[str, Any]) -> dict[str, str]:
    conditions = (cr.get("status") or {}).get("conditions") or []
    return {c["type"]: c["lastTransitionTime"] for c in conditions}


def test_a_replica_folding_a_stale_copy_rereads_instead_of_overwriting_the_newer_status(
    cluster: Cluster, namespace: str
) -> None:
    """Replica A writes the CR's first status. Replica B, whose copy of the CR (the stream's)
    is from before that write, folds the same facts: on its own it would see every condition
    as new and move each lastTransitionTime to its own clock. Its write is refused, it reads
    the CR again, and finds nothing to write."""
    key = _create_cr(cluster, namespace)

    async def scenario() -> tuple[str, str, dict[str, Any], dict[str, Any]]:
        kube = await KubeClient.connect(cluster.kubeconfig)
        none: Any = None

        def replica(name: str) -> StatusRefresher:
            recorder = EventRecorder(kube, instance=name)
            return StatusRefresher(kube, none, recorder=recorder, min_interval=0.0, pods=none)

        try:
            stale = await kube.get(MEMCACHED, namespace, "cache")
            assert stale is not None and not stale.get("status")
            _, first = await replica("a")._refresh(key, None, stale, None, indexed=False)
            written = await kube.get(MEMCACHED, namespace, "cache")
            await asyncio.sleep(1.1)  # condition times are in seconds: B's clock is later
            _, second = await replica("b")._refresh(key, None, stale, None, indexed=False)
            after = await kube.get(MEMCACHED, namespace, "cache")
            assert written is not None and after is not None
            return first, second, written, after
        finally:
            await kube.close()

    conflicts = _conflicts()
    first, second, written, after = asyncio.run(scenario())
    assert first == "written"
    assert _transition_times(written), "replica A wrote no conditions"
    assert second == "skipped"
    assert _transition_times(after) == _transition_times(written)
    assert after["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
    assert _conflicts() == conflicts + 1


def test_a_refresh_of_a_cr_changed_since_the_stream_copy_writes_the_current_generation(
    cluster: Cluster, namespace: str
) -> None:
    """The stream's copy is of generation 1; the user has changed the spec since. The write
    from the old copy is refused, and the status written after the re-read reports the
    generation the API server holds."""
    key = _create_cr(cluster, namespace)

    async def scenario() -> tuple[str, dict[str, Any]]:
        kube = await KubeClient.connect(cluster.kubeconfig)
        none: Any = None
        try:
            stale = await kube.get(MEMCACHED, namespace, "cache")
            assert stale is not None
            cluster.kubectl(
                "patch", "memcached", "cache", "-n", namespace, "--type=merge",
                "-p", '{"spec": {"size": 2}}',
            )  # fmt: skip
            refresher = StatusRefresher(
                kube,
                none,
                recorder=EventRecorder(kube, instance="a"),
                min_interval=0.0,
                pods=none,
            )
            _, what = await refresher._refresh(key, None, stale, None, indexed=False)
            after = await kube.get(MEMCACHED, namespace, "cache")
            assert after is not None
            return what, after
        finally:
            await kube.close()

    what, after = asyncio.run(scenario())
    assert what == "written"
    assert after["metadata"]["generation"] == 2
    observed = {c["type"]: c["observedGeneration"] for c in after["status"]["conditions"]}
    assert observed["Available"] == observed["Progressing"] == 2, observed
