"""The status service's read of a CR's pods from the API server (when its pod index has not
caught up with the stream) holds one page at a time: the pods its selector catches are any a
tenant labelled so, of any size, and the one status process serves every tenant. Real API
server; the refresher's read in this process, its memory measured by tracemalloc."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from typing import Any

import pytest

from memcached_operator.shared.api.contract import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    OWNER_ANNOTATION,
    label_value,
)
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.kube.client import KubeClient
from memcached_operator.status.service import StatusRefresher
from tests.conftest import Cluster
from tests.support import wait_for

pytestmark = pytest.mark.integration

CR = "cache"


def _labelled_pod(cluster: Cluster, namespace: str, name: str, blob: str) -> None:
    """A pod labelled and annotated as one of the CR's, with ``blob`` in its environment."""
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_INSTANCE: label_value(CR), LABEL_MANAGED_BY: MANAGED_BY},
            "annotations": {OWNER_ANNOTATION: CR},
        },
        "spec": {
            "containers": [{"name": "c", "image": "pause", "env": [{"name": "B", "value": blob}]}]
        },
    }
    cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods", "-f", "-", input_=json.dumps(doc)
    )


def _ready(cluster: Cluster, namespace: str) -> set[str]:
    pods = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    return {
        p["metadata"]["name"]
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    }


def test_the_fallback_read_of_a_crs_pods_holds_a_page_at_a_time(
    cluster: Cluster, namespace: str
) -> None:
    # 30 pods of 1.4 MB each: 42 MB that one list call used to read, decode and keep at once.
    names = {f"pod-{i:02d}" for i in range(30)}
    for name in sorted(names):
        _labelled_pod(cluster, namespace, name, "b" * 1_400_000)
    wait_for(lambda: _ready(cluster, namespace) == names, timeout=120, what="the pods ready")

    async def read() -> tuple[list[str], int]:
        kube = await KubeClient.connect(cluster.kubeconfig)
        none: Any = None
        refresher = StatusRefresher(
            kube, none, recorder=none, min_interval=1.0, pods=none, max_page=4 << 20
        )
        deployment = {"status": {"readyReplicas": 30}}
        tracemalloc.start()
        try:
            nodes, _ = await refresher._ready_pods(
                ObjectKey(namespace, CR), deployment, indexed=False
            )
            return nodes, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await kube.close()

    nodes, peak = asyncio.run(read())
    # Every page was read (pages of two pods, within 4 MiB) ...
    assert nodes == sorted(names)
    # ... and little more than a page's worth held at once: 20.5 MiB here, where one list call
    # of all 30 held 563 MiB at its peak (the status service's limit in deploy/ is 384 MiB).
    assert peak < 64 << 20, f"the read held {peak / 2**20:.0f} MiB at its peak"
