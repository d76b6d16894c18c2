"""The status service's pod index against a real nats-server: it answers what a pod LIST would,
from the pod events on the stream, and never answers from behind the stream."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError

from memcached_operator.shared.api.contract import OWNER_ANNOTATION
from memcached_operator.shared.bus import leaderget, subjects
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.status.pod_index import PodIndex
from memcached_operator.watcher.emitter import extensions
from memcached_operator.watcher.owners import Kind

pytestmark = pytest.mark.integration

_rv = itertools.count(1000)


@pytest.fixture
def ns() -> str:
    return f"pods-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def index(nc: Client) -> AsyncIterator[PodIndex]:
    idx = PodIndex(nc.jetstream())
    idx.start()
    yield idx
    await idx.stop()


def pod(
    ns: str, name: str, *, owner: str, ready: bool, terminating: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "uid": f"uid-{ns}-{name}",
        "resourceVersion": str(next(_rv)),
        "annotations": {OWNER_ANNOTATION: owner},
        # As the Deployment controller makes them: the watcher believes the annotation only
        # for a pod of the ReplicaSet named after the owner's Deployment.
        "labels": {"pod-template-hash": "5d8f9c7b6"},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": f"{owner}-5d8f9c7b6",
                "controller": True,
            }
        ],
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


async def publish(
    js: JetStreamContext, change: str, obj: dict[str, Any], *, old_watcher: bool = False
) -> None:
    """Publish a pod event as the watcher does (``old_watcher``: as one from before the events
    carried ce-owner and ce-ready, which the index must read from the body)."""
    key = ObjectKey(obj["metadata"]["namespace"], obj["metadata"]["name"])
    headers, body = events.encode(
        kind="pod",
        change=change,
        obj=obj,
        extensions=None if old_watcher else extensions(Kind("pod", owned=True), obj),
    )
    await js.publish(subjects.subject(subjects.EVENTS, "pod", key), body, headers=headers)


async def test_ready_pods_follow_the_pod_events(nc: Client, ns: str, index: PodIndex) -> None:
    js = nc.jetstream()
    cache = ObjectKey(ns, "cache")
    await publish(js, "added", pod(ns, "cache-a", owner="cache", ready=False))
    await publish(js, "added", pod(ns, "cache-b", owner="cache", ready=True))
    await publish(js, "added", pod(ns, "other-a", owner="other", ready=True))
    assert await index.caught_up(ns, timeout=5)
    assert index.ready_pods(cache) == ["cache-b"]
    assert index.ready_pods(ObjectKey(ns, "other")) == ["other-a"]

    await publish(js, "modified", pod(ns, "cache-a", owner="cache", ready=True))
    assert await index.caught_up(ns, timeout=5)
    assert index.ready_pods(cache) == ["cache-a", "cache-b"]

    # Terminating pods and deleted pods are not members any more.
    await publish(js, "modified", pod(ns, "cache-b", owner="cache", ready=True, terminating=True))
    assert await index.caught_up(ns, timeout=5)
    assert index.ready_pods(cache) == ["cache-a"]
    await publish(js, "deleted", pod(ns, "cache-a", owner="cache", ready=True))
    await publish(js, "deleted", pod(ns, "cache-b", owner="cache", ready=True))
    assert await index.caught_up(ns, timeout=5)
    assert index.ready_pods(cache) == []
    assert index.ready_pods(ObjectKey(ns, "other")) == ["other-a"]


async def test_events_are_folded_from_their_headers_and_old_ones_from_their_bodies(
    nc: Client, ns: str, index: PodIndex
) -> None:
    """The index's consumer is headers-only: the watcher's events say owner and readiness in
    ce-owner/ce-ready; events without them (an older watcher's) are read in full, in order."""
    js = nc.jetstream()
    cache = ObjectKey(ns, "cache")
    ready = pod(ns, "cache-a", owner="cache", ready=True)
    headers, _ = events.encode(
        kind="pod", change="added", obj=ready, extensions=extensions(Kind("pod", owned=True), ready)
    )
    assert (headers["ce-owner"], headers["ce-ready"]) == ("cache", "true")

    await publish(js, "added", pod(ns, "cache-a", owner="cache", ready=True), old_watcher=True)
    await publish(js, "added", pod(ns, "cache-b", owner="cache", ready=True))
    await publish(js, "added", pod(ns, "cache-c", owner="cache", ready=False), old_watcher=True)
    assert await index.caught_up(ns, timeout=5)
    assert index.ready_pods(cache) == ["cache-a", "cache-b"]
    await publish(js, "modified", pod(ns, "cache-a", owner="cache", ready=False))
    await publish(js, "modified", pod(ns, "cache-c", owner="cache", ready=True), old_watcher=True)
    await publish(js, "deleted", pod(ns, "cache-b", owner="cache", ready=True), old_watcher=True)
    assert await index.caught_up(ns, timeout=5)
    assert index.ready_pods(cache) == ["cache-c"]


async def test_the_barrier_makes_every_published_change_visible(
    nc: Client, ns: str, index: PodIndex
) -> None:
    """Read right after publishing, as a refresh does right after the watcher's request: every
    time, the index shows the change (without the barrier it would often be behind)."""
    js = nc.jetstream()
    cache = ObjectKey(ns, "cache")
    for i in range(100):
        ready = i % 2 == 0
        await publish(js, "modified", pod(ns, "cache-0", owner="cache", ready=ready))
        assert await index.caught_up(ns, timeout=5)
        assert index.ready_pods(cache) == (["cache-0"] if ready else []), f"round {i}"


async def test_a_new_index_starts_from_the_newest_event_per_pod(nc: Client, ns: str) -> None:
    js = nc.jetstream()
    for i in range(20):
        await publish(js, "added", pod(ns, f"cache-{i:02d}", owner="cache", ready=False))
        await publish(js, "modified", pod(ns, f"cache-{i:02d}", owner="cache", ready=i < 15))
    for i in range(5):
        await publish(js, "deleted", pod(ns, f"cache-{i:02d}", owner="cache", ready=True))
    late = PodIndex(js)
    late.start()
    try:
        assert await late.caught_up(ns, timeout=5)
        assert late.ready_pods(ObjectKey(ns, "cache")) == [f"cache-{i:02d}" for i in range(5, 15)]
    finally:
        await late.stop()


async def test_an_index_that_is_not_following_says_so_instead_of_answering(
    nc: Client, ns: str
) -> None:
    js = nc.jetstream()
    await publish(js, "added", pod(ns, "cache-0", owner="cache", ready=True))
    stopped = PodIndex(js)  # never started: it has folded nothing
    started = asyncio.get_running_loop().time()
    assert not await stopped.caught_up(ns, timeout=0.5)
    assert asyncio.get_running_loop().time() - started < 3


async def test_the_barrier_reads_the_newest_sequence_of_the_namespaces_pod_events(
    nc: Client, ns: str, index: PodIndex
) -> None:
    """newest_event asks the leader for a sequence number only (shared/bus/leaderget.py): 0 for
    a namespace without pod events, then the stream sequence of its newest pod event, whichever
    pod it is of and however many other namespaces publish meanwhile."""
    js = nc.jetstream()
    assert await index.newest_event(ns) == 0
    await publish(js, "added", pod(ns, "cache-a", owner="cache", ready=False))
    await publish(js, "added", pod(ns, "cache-b", owner="cache", ready=True))
    newest = await js.get_last_msg(
        EVENTS_STREAM, subjects.wildcard(subjects.EVENTS, "pod", ns), direct=False
    )
    await publish(js, "added", pod(f"{ns}-other", "cache-c", owner="cache", ready=True))
    assert newest.seq and await index.newest_event(ns) == newest.seq
    with pytest.raises(APIError):
        await leaderget.last_sequence(js, "NO_SUCH_STREAM", "mcop.events.pod.x.*")
