"""Batched direct gets against the real nats-server: what a reconcile or a status refresh reads
of the event stream in one request is what one get per subject would have read."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import Client

from memcached_operator.shared.bus import directget
from memcached_operator.shared.bus.directget import DirectGetter
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import state
from memcached_operator.shared.runtime.errors import TransientError

pytestmark = pytest.mark.integration


def _subjects() -> tuple[ObjectKey, str, str, str]:
    key = ObjectKey(f"dg-{uuid.uuid4().hex[:8]}", "cache")
    return (
        key,
        state.event_subject("memcached", key),
        state.event_subject("deployment", key),
        state.event_subject("pod", key),
    )


async def test_newest_message_of_each_subject_in_one_read(nc: Client) -> None:
    js = nc.jetstream()
    _, cr, deployment, missing = _subjects()
    await js.publish(cr, b'{"v": 1}', headers={"ce-type": "x.memcached.added"})
    await js.publish(deployment, b'{"d": 1}', headers={"ce-type": "x.deployment.added"})
    newest = await js.publish(cr, b'{"v": 2}', headers={"ce-type": "x.memcached.modified"})

    found = await directget.last_msgs(js, EVENTS_STREAM, [cr, deployment, missing])
    assert DirectGetter.of(js).batched  # read in one batch, not one subject at a time

    assert set(found) == {cr, deployment}
    assert found[cr].data == b'{"v": 2}'
    assert found[cr].seq == newest.seq
    assert found[cr].headers["ce-type"] == "x.memcached.modified"
    assert found[deployment].data == b'{"d": 1}'
    # The same as one direct get per subject.
    for subject, msg in found.items():
        single = await js.get_last_msg(EVENTS_STREAM, subject, direct=True)
        assert (single.seq, single.data) == (msg.seq, msg.data)


async def test_no_message_for_any_subject_is_an_empty_answer(nc: Client) -> None:
    _, cr, deployment, _ = _subjects()
    assert await directget.last_msgs(nc.jetstream(), EVENTS_STREAM, [cr, deployment]) == {}


async def test_concurrent_reads_each_get_their_own_answer(nc: Client) -> None:
    js = nc.jetstream()
    keys = [_subjects() for _ in range(40)]
    for i, (_, cr, _, _) in enumerate(keys):
        await js.publish(cr, str(i).encode())
    answers = await asyncio.gather(
        *(directget.last_msgs(js, EVENTS_STREAM, [cr, dep]) for _, cr, dep, _ in keys)
    )
    for i, ((_, cr, _, _), found) in enumerate(zip(keys, answers, strict=True)):
        assert set(found) == {cr}
        assert found[cr].data == str(i).encode()


async def test_one_subject_at_a_time_reads_the_same(nc: Client) -> None:
    """The fallback for servers without multi_last gives the same answer."""
    js = nc.jetstream()
    _, cr, deployment, missing = _subjects()
    await js.publish(cr, b"a")
    await js.publish(deployment, b"b")
    batched = await DirectGetter(nc).last_msgs(js, EVENTS_STREAM, [cr, deployment, missing])
    single = DirectGetter(nc)
    single.batched = False
    one_by_one = await single.last_msgs(js, EVENTS_STREAM, [cr, deployment, missing])

    def essentials(found: dict[str, directget.StoredMsg]) -> set[tuple[str, int, bytes]]:
        return {(m.subject, m.seq, m.data) for m in found.values()}

    assert set(batched) == set(one_by_one) == {cr, deployment}
    assert essentials(batched) == essentials(one_by_one)


async def test_a_missing_stream_is_a_transient_error(nc: Client) -> None:
    getter = DirectGetter(nc, timeout=2.0)
    with pytest.raises(TransientError):
        await getter.last_msgs(nc.jetstream(), "NO_SUCH_STREAM", ["a.b"])
    assert getter.batched  # not taken for a server without batches
