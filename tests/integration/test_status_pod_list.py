"""Reads of a CR's pods from the API server hold one page at a time: the pods a selector
catches are any a tenant labelled so, of any size. The status service's read (when its pod
index has not caught up with the stream: the one status process serves every tenant) and
``kubectl memcached explain``'s (on a user's machine). Real API server; each read in this
process, its memory measured by tracemalloc."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from typing import Any

import pytest

from memcached_operator.audit.explain import cluster_facts
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


def _labelled_pod(
    cluster: Cluster, namespace: str, name: str, blob: str, *, schedulable: bool = True
) -> None:
    """A pod labelled and annotated as one of the CR's, with ``blob`` in its environment (and,
    unless ``schedulable``, a node selector no node matches: it stays pending, not ready)."""
    doc: dict[str, Any] = {
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
    if not schedulable:
        doc["spec"]["nodeSelector"] = {"example.com/no-such-node": "true"}
    cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods", "-f", "-", input_=json.dumps(doc)
    )


def _pods_with(cluster: Cluster, namespace: str, condition: str, **fields: str) -> set[str]:
    """The names of the namespace's pods with a condition of type ``condition`` that has
    ``fields`` (e.g. status="True")."""
    pods = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    return {
        p["metadata"]["name"]
        for p in pods
        if any(
            c["type"] == condition and all(c.get(k) == v for k, v in fields.items())
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
    wait_for(
        lambda: _pods_with(cluster, namespace, "Ready", status="True") == names,
        timeout=120,
        what="the pods ready",
    )

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


def test_explain_reads_a_crs_pods_a_page_at_a_time(cluster: Cluster, namespace: str) -> None:
    # The CR's Deployment (no replicas of its own) selects 30 pending pods of 1.4 MB each.
    selector = {LABEL_INSTANCE: label_value(CR), LABEL_MANAGED_BY: MANAGED_BY}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": CR, "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {"containers": [{"name": "c", "image": "pause"}]},
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input_=json.dumps(deployment))
    names = {f"pod-{i:02d}" for i in range(30)}
    for name in sorted(names):
        _labelled_pod(cluster, namespace, name, "b" * 1_400_000, schedulable=False)
    wait_for(
        lambda: _pods_with(cluster, namespace, "PodScheduled", reason="Unschedulable") == names,
        timeout=120,
        what="the scheduler's verdict on every pod",
    )

    async def read() -> tuple[dict[str, Any], int]:
        kube = await KubeClient.connect(cluster.kubeconfig)
        tracemalloc.start()
        try:
            facts = await cluster_facts(kube, ObjectKey(namespace, CR))
            return facts, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await kube.close()

    facts, peak = asyncio.run(read())
    # Every unready pod is listed, with the scheduler's reason ...
    assert {p["name"] for p in facts["unreadyPods"]} == names
    assert {p["reason"] for p in facts["unreadyPods"]} == {"Unschedulable"}
    # ... and what is held at once is bounded by the page (16 MiB, the default bound: its bytes
    # as read and joined, its objects, the previous page's): 141 MiB here, where one list call
    # of all 30 held 563 MiB, and more with every pod.
    assert peak < 192 << 20, f"the read held {peak / 2**20:.0f} MiB at its peak"
