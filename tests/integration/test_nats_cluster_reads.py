"""Read-your-writes on a three-node JetStream cluster (issue 18).

A direct get on an R3 stream is answered by whichever replica the request reaches, and NATS
prefers one on the node the reader is connected to: a follower. An R3 stream acknowledges a
message once two replicas hold it, so the third may not have it yet, and a follower that was
hung (SIGSTOP) answers from what it had until it has caught up. The services' reads carry the
sequence of the event that caused them (``at_least``) and must see it, whichever replica
answers; these tests write and read at once through a follower, including one just resumed.
"""

from __future__ import annotations

import asyncio
import signal
import uuid

import nats
import pytest
from nats.aio.client import Client

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import state
from memcached_operator.shared.runtime.errors import TransientError
from tests.conftest import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def _connect(cluster: Cluster, node: int | None = None) -> Client:
    """As the admin, to node ``node`` only, or to any node (the full list)."""
    urls = cluster.layout.nats_url.split(",")
    servers = urls if node is None else [urls[node]]
    return await nats.connect(servers=servers, connect_timeout=5, allow_reconnect=node is None)


def _leader_and_follower(cluster: Cluster) -> tuple[int, int]:
    leader = cluster.nats.leader_of(EVENTS_STREAM)
    assert leader is not None, "the events stream has no leader"
    return leader, next(node for node in cluster.nats.nodes if node != leader)


async def _write_then_read(
    writer: Client, reader: Client, subject: str, *, barrier: bool
) -> tuple[int, int]:
    """Publish one event on ``subject`` and read the subject's newest at once: both seqs."""
    ack = await writer.jetstream().publish(
        subject, uuid.uuid4().bytes, headers={"Nats-Msg-Id": uuid.uuid4().hex}
    )
    seen = await state.snapshot(reader.jetstream(), [subject], at_least=ack.seq if barrier else 0)
    message = seen.message(subject)
    return ack.seq, message.seq if message is not None else 0


async def _read_as_a_worker_would(reader: Client, subject: str, at_least: int) -> state.Snapshot:
    """The snapshot, retried on a transient failure (no replica holding ``at_least`` answered
    yet) as the work queue retries a request: a stale answer is never returned."""
    for _ in range(20):
        try:
            return await state.snapshot(reader.jetstream(), [subject], at_least=at_least)
        except TransientError:
            await asyncio.sleep(0.5)
    raise AssertionError(f"no replica holding sequence {at_least} answered within ~40 s")


async def _publish_while_hung(
    cluster: Cluster, follower: int, writer: Client, subject: str, count: int = 200
) -> int:
    """Publish ``count`` messages on ``subject`` while ``follower`` is hung (SIGSTOP): the
    other two replicas store them, the hung one misses them. The last one's sequence."""
    cluster.nats.signal(follower, signal.SIGSTOP)
    try:
        acks = [
            await writer.jetstream().publish(
                subject, b"%d" % i, headers={"Nats-Msg-Id": uuid.uuid4().hex}
            )
            for i in range(count)
        ]
    finally:
        cluster.nats.signal(follower, signal.SIGCONT)
    return acks[-1].seq


async def test_a_read_through_a_follower_sees_the_write_before_it(nats_cluster: Cluster) -> None:
    leader, follower = _leader_and_follower(nats_cluster)
    writer = await _connect(nats_cluster, leader)
    reader = await _connect(nats_cluster, follower)
    subject = subjects.subject(subjects.EVENTS, "memcached", ObjectKey("ryw", "one"))
    try:
        stale_without = 0
        for _ in range(150):
            written, read = await _write_then_read(writer, reader, subject, barrier=False)
            stale_without += read < written
        for _ in range(150):
            written, read = await _write_then_read(writer, reader, subject, barrier=True)
            assert read == written, "a read with the barrier missed the write before it"
        print(f"stale reads through follower {follower} without the barrier: {stale_without}/150")
    finally:
        await writer.close()
        await reader.close()


async def test_a_follower_resumed_after_a_hang_answers_only_once_caught_up(
    nats_cluster: Cluster,
) -> None:
    leader, follower = _leader_and_follower(nats_cluster)
    subject = subjects.subject(subjects.EVENTS, "memcached", ObjectKey("ryw", "hung"))
    writer = await _connect(nats_cluster, leader)
    reader = await _connect(nats_cluster, follower)
    try:
        for attempt in range(3):
            newest = await _publish_while_hung(nats_cluster, follower, writer, subject)
            seen = await _read_as_a_worker_would(reader, subject, newest)
            message = seen.message(subject)
            assert message is not None and message.seq == newest, f"attempt {attempt}"
            await asyncio.sleep(1)
    finally:
        nats_cluster.nats.signal(follower, signal.SIGCONT)
        await writer.close()
        await reader.close()


async def test_the_pod_index_barrier_is_read_from_the_leader_not_a_replica_behind(
    nats_cluster: Cluster,
) -> None:
    """The status service waits until its pod index has folded the newest pod event of the
    CR's namespace. Were that newest event read from a replica behind, a refresh right after a
    pod change would fold a ready count older than its request and write it (a status stuck
    behind its Deployment, as a chaos run on three nodes showed)."""
    from memcached_operator.status.pod_index import PodIndex

    leader, follower = _leader_and_follower(nats_cluster)
    namespace = "ryw-pods"
    subject = subjects.subject(subjects.EVENTS, "pod", ObjectKey(namespace, "p-0"))
    writer = await _connect(nats_cluster, leader)
    reader = await _connect(nats_cluster, follower)
    index = PodIndex(reader.jetstream())
    try:
        for attempt in range(3):
            written = await _publish_while_hung(nats_cluster, follower, writer, subject)
            newest = await index.newest_event(namespace)
            assert newest == written, f"attempt {attempt}: a replica behind answered"
            await asyncio.sleep(1)
    finally:
        nats_cluster.nats.signal(follower, signal.SIGCONT)
        await writer.close()
        await reader.close()
