"""Issue 15: what a CR says when it cannot make progress, and that resync does not re-poison.

Two attacks a tenant (or a bad message) can make, run against the real cluster with the
watcher, reconcilers and status service as processes:

- a Memcached whose pods the API server refuses (here a LimitRange's per-container memory
  maximum that the CR's limit exceeds): the ReplicaSet can never create a pod. The CR must say
  so, with the API's own reason and message and an Event, long before the Deployment's
  600 s progress deadline;
- a CR whose reconcile request was dead-lettered: it must say so (Degraded, DeadLettered) and
  the watcher's periodic resync must not enqueue it again and again, until its spec changes.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import nats
import pytest

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import DEADLETTER_STREAM
from tests.conftest import Cluster
from tests.support import Services, await_for, condition, read_stream, wait_for

pytestmark = pytest.mark.e2e


def pipeline(services: Services, namespace: str, **watcher_env: str) -> None:
    services.start("watcher", "--namespaces", namespace, name="watcher", **watcher_env)
    services.start("reconciler", name="reconciler-0")
    services.start("status", name="status-0")


def events_about(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    events = cluster.kubectl_json("get", "events.events.k8s.io", "-n", namespace)["items"]
    return [
        e
        for e in events
        if e.get("regarding", {}).get("name") == name
        and e.get("regarding", {}).get("kind") == "Memcached"
    ]


def test_pods_refused_by_a_limit_range_make_the_cr_degraded_with_the_apis_reason(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    limits = {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": "small-containers", "namespace": namespace},
        "spec": {"limits": [{"type": "Container", "max": {"memory": "64Mi"}}]},
    }
    cluster.kubectl("apply", "-f", "-", input_=json.dumps(limits))
    # The default progress deadline (600 s): the CR must not wait for it.
    pipeline(service_procs, namespace)
    too_big = {"limits": {"memory": "128Mi"}, "requests": {"memory": "32Mi"}}
    cluster.apply_memcached(namespace, "greedy", {"size": 2, "resources": too_big})

    mc = cluster.wait_conditions(
        namespace,
        "greedy",
        Degraded="True",
        timeout=90,
        what="Degraded=True for pods the LimitRange refuses",
    )
    # What the API server itself reported, as the Deployment controller copied it from the
    # ReplicaSet: the CR says exactly that.
    deployment = cluster.kubectl_json("get", "deployment", "-n", namespace, "greedy")
    failure = condition(deployment, "ReplicaFailure")
    assert failure["status"] == "True", deployment["status"]
    assert failure["reason"] == "FailedCreate"
    assert "maximum memory usage per Container is 64Mi" in failure["message"]
    degraded = condition(mc, "Degraded")
    assert degraded["reason"] == failure["reason"]
    assert degraded["message"] == failure["message"]
    assert degraded["observedGeneration"] == mc["metadata"]["generation"]
    # The Deployment still says Progressing=True (until its deadline); the CR says why not.
    assert condition(deployment, "Progressing")["status"] == "True"
    assert condition(mc, "Progressing")["status"] == "False"
    assert condition(mc, "Progressing")["reason"] == "FailedCreate"
    assert condition(mc, "Available")["status"] == "False"
    assert condition(mc, "Available")["reason"] == "FailedCreate"
    events = wait_for(
        lambda: [
            e for e in events_about(cluster, namespace, "greedy") if e["reason"] == "FailedCreate"
        ],
        timeout=30,
        what="an Event about the refused pods on the Memcached",
    )
    assert [e["type"] for e in events] == ["Warning"]
    assert "maximum memory usage per Container is 64Mi" in events[0]["note"]
    assert events[0]["note"].startswith("Degraded is True: ")

    # The user fixes the spec: the new ReplicaSet's pods are admitted and Degraded clears.
    cluster.apply_memcached(
        namespace,
        "greedy",
        {"size": 2, "resources": {"limits": {"memory": "64Mi"}, "requests": {"memory": "32Mi"}}},
    )
    fixed = cluster.wait_conditions(
        namespace,
        "greedy",
        Available="True",
        Degraded="False",
        timeout=120,
        what="Available and no longer Degraded after the spec fits the LimitRange",
    )
    assert condition(fixed, "Progressing")["reason"] == "RolloutComplete"


def test_a_scale_past_the_namespaces_pod_quota_is_degraded_and_recovers(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    """A running CR scaled past a ResourceQuota: one pod keeps serving, the second is refused.
    (The Deployment update that reports the refused pod changes nothing else the status is
    folded from; that it wakes the status service by itself is shown in
    tests/unit/test_conditions.py, since here the status refresh of the scale may come late
    enough to see it anyway.)"""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "one-pod", "namespace": namespace},
        "spec": {"hard": {"pods": "1"}},
    }
    cluster.kubectl("apply", "-f", "-", input_=json.dumps(quota))
    # Until the quota controller has counted the namespace, admission refuses every pod.
    wait_for(
        lambda: (
            cluster.kubectl_json("get", "resourcequota", "-n", namespace, "one-pod")
            .get("status", {})
            .get("used")
        ),
        timeout=60,
        what="the quota to be counted",
    )
    pipeline(service_procs, namespace)
    cluster.apply_memcached(namespace, "grows", {"size": 1})
    cluster.wait_available(namespace, "grows")

    cluster.kubectl("scale", "-n", namespace, "mc/grows", "--replicas=2")
    mc = cluster.wait_conditions(
        namespace,
        "grows",
        Degraded="True",
        timeout=90,
        what="Degraded=True for the pod the quota refuses",
    )
    failure = condition(
        cluster.kubectl_json("get", "deployment", "-n", namespace, "grows"), "ReplicaFailure"
    )
    degraded = condition(mc, "Degraded")
    assert (degraded["reason"], degraded["message"]) == (failure["reason"], failure["message"])
    assert degraded["reason"] == "FailedCreate"
    assert "exceeded quota: one-pod" in degraded["message"]
    assert degraded["observedGeneration"] == mc["metadata"]["generation"]
    # One pod still serves: Available says how many are ready and why not more.
    assert mc["status"]["readyReplicas"] == 1
    assert condition(mc, "Available")["reason"] == "FailedCreate"
    assert condition(mc, "Available")["message"].startswith("1/2 replicas ready: ")
    wait_for(
        lambda: [
            e
            for e in events_about(cluster, namespace, "grows")
            if e["reason"] == "FailedCreate" and e["type"] == "Warning"
        ],
        timeout=30,
        what="a Warning Event about the refused pod",
    )

    # Scaled back within the quota: nothing is refused any more.
    cluster.kubectl("scale", "-n", namespace, "mc/grows", "--replicas=1")
    cluster.wait_conditions(
        namespace,
        "grows",
        Degraded="False",
        Available="True",
        timeout=120,
        what="no longer Degraded once the CR fits the quota again",
    )


class RequestCounter:
    """Counts the reconcile requests published per object in one namespace, as they pass
    (the requests stream deletes them once handled, so it cannot be counted afterwards)."""

    def __init__(self, nats_url: str, namespace: str) -> None:
        self.url = nats_url
        self.filter = subjects.subject(
            subjects.REQUESTS, "reconcile", subjects.ObjectKey(namespace, "x")
        ).rsplit(".", 1)[0]
        self.counts: Counter[str] = Counter()
        self._nc: Any = None

    async def start(self) -> None:
        self._nc = await nats.connect(self.url, connect_timeout=5)

        async def seen(msg: Any) -> None:
            self.counts[subjects.parse(msg.subject).key.name] += 1

        await self._nc.subscribe(f"{self.filter}.*", cb=seen)
        await self._nc.flush()

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


async def _publish_raw(url: str, subject: str, data: bytes, headers: dict[str, str]) -> None:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        await nc.jetstream().publish(subject, data, headers=headers)
    finally:
        await nc.close()


async def _dead_letters(cluster: Cluster, namespace: str, name: str) -> list[Any]:
    key = subjects.ObjectKey(namespace, name)
    filter_ = subjects.subject(subjects.DEADLETTER, "reconcile", key)
    return await read_stream(cluster.nats_url, filter_, stream=DEADLETTER_STREAM)


async def test_a_dead_lettered_cr_says_so_and_resync_leaves_it_alone_until_its_spec_changes(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    resync = 5.0
    pipeline(service_procs, namespace, RESYNC_PERIOD=str(resync))
    for name in ("poisoned", "healthy"):
        cluster.apply_memcached(namespace, name, {"size": 1})
    for name in ("poisoned", "healthy"):
        cluster.wait_available(namespace, name)
    counter = RequestCounter(cluster.nats_url, namespace)
    await counter.start()
    try:
        # Right after a resync, so that the next one comes after the condition is written: a
        # resync request in between would find this CR healthy and clear the condition (a
        # request that crashes workers would simply be dead-lettered once more).
        ticks = counter.counts["healthy"]
        await await_for(
            lambda: counter.counts["healthy"] > ticks, timeout=3 * resync, what="a resync"
        )
        # A request the reconciler can only dead-letter (it lacks the header every request
        # carries), as a request that crashes its workers ends after --max-deliveries.
        key = subjects.ObjectKey(namespace, "poisoned")
        subject = subjects.subject(subjects.REQUESTS, "reconcile", key)
        await _publish_raw(cluster.nats_url, subject, b"", {"X-Test": "poison"})

        mc = await await_for(
            lambda: (
                (m := cluster.get_mc(namespace, "poisoned"))
                and condition(m, "Degraded").get("reason") == "DeadLettered"
                and m
            ),
            timeout=60,
            what="Degraded=True, DeadLettered",
        )
        degraded = condition(mc, "Degraded")
        assert degraded["status"] == "True"
        assert "MissingHeader" in degraded["message"]
        assert "not retried until the spec changes" in degraded["message"]
        assert degraded["observedGeneration"] == mc["metadata"]["generation"]
        assert len(await _dead_letters(cluster, namespace, "poisoned")) == 1
        assert any(
            e["reason"] == "DeadLettered" and e["type"] == "Warning"
            for e in events_about(cluster, namespace, "poisoned")
        )

        # Three resyncs: each requests the healthy CR, none the dead-lettered one.
        before = dict(counter.counts)
        await await_for(
            lambda: counter.counts["healthy"] >= before.get("healthy", 0) + 3,
            timeout=5 * resync,
            what="three more resyncs",
        )
        assert counter.counts["poisoned"] == before.get("poisoned", 0), counter.counts
        assert condition(cluster.get_mc(namespace, "poisoned"), "Degraded")["reason"] == (
            "DeadLettered"
        )
        assert len(await _dead_letters(cluster, namespace, "poisoned")) == 1

        # A restarted watcher knows too: its list shows the CR's status (the stream already
        # holds this version of the CR, so no change is published for it).
        service_procs.stop("watcher")
        service_procs.start(
            "watcher", "--namespaces", namespace, name="watcher-2", RESYNC_PERIOD=str(resync)
        )
        restarted = dict(counter.counts)
        await await_for(
            lambda: counter.counts["healthy"] >= restarted.get("healthy", 0) + 2,
            timeout=6 * resync,
            what="two resyncs of the restarted watcher",
        )
        assert counter.counts["poisoned"] == before.get("poisoned", 0), counter.counts

        # A spec change is a new generation: it is requested and reconciled as usual, and the
        # resync takes the CR back.
        cluster.apply_memcached(namespace, "poisoned", {"size": 2})
        await await_for(
            lambda: (
                (m := cluster.get_mc(namespace, "poisoned"))
                and condition(m, "Degraded").get("status") == "False"
                and condition(m, "Available").get("status") == "True"
                and m["status"].get("readyReplicas") == 2
            ),
            timeout=90,
            what="the new generation reconciled: Degraded=False, 2 ready",
        )
        # The request went out before that reconcile, but the counter sees it only when this
        # loop reads it: the whole chain can fit inside one blocking kubectl call above.
        await await_for(
            lambda: counter.counts["poisoned"] > before.get("poisoned", 0),
            timeout=10,
            what="the new generation's request",
        )
        resumed = counter.counts["poisoned"]
        await await_for(
            lambda: counter.counts["poisoned"] > resumed,
            timeout=3 * resync,
            what="the resync to request the CR again",
        )
    finally:
        await counter.close()
