"""Bounded streams against a real nats-server: every stream has a byte limit and the discard
policy shared/bus/streams.py chose for it, a full stream behaves as that policy says, and
ensure_stream adds missing limits without undoing the ones an operator set by hand.

The policy tests use copies of the real configurations under their own names and subjects, with
a few KiB instead of GiB, so they fill up at once and leave the session's streams alone.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import ServiceUnavailableError

from memcached_operator.shared.bus.stream_admin import stream_problems
from memcached_operator.shared.bus.streams import (
    DEADLETTER_STREAM,
    DEFAULT_EVENTS_PER_OBJECT,
    DEFAULT_MAX_BYTES,
    EVENTS_LIMITS,
    EVENTS_STREAM,
    LEASES_STREAM,
    REQUESTS_STREAM,
    GiB,
    StreamLimitsError,
    deadletter_config,
    ensure_stream,
    events_config,
    requests_config,
)
from memcached_operator.shared.runtime.errors import as_transient

pytestmark = pytest.mark.integration


@pytest.fixture
async def scratch(nc: Client) -> AsyncIterator[Callable[[api.StreamConfig], api.StreamConfig]]:
    """Rename a configuration to a stream of the test's own (deleted afterwards)."""
    js = nc.jetstream()
    made: list[str] = []

    def rename(config: api.StreamConfig) -> api.StreamConfig:
        tag = uuid.uuid4().hex[:8]
        made.append(f"T_{tag}")
        return dataclasses.replace(config, name=f"T_{tag}", subjects=[f"t-{tag}.>"])

    yield rename
    for name in made:
        try:
            await js.delete_stream(name)
        except Exception:
            pass


def subject_of(config: api.StreamConfig, i: int) -> str:
    assert config.subjects is not None
    return config.subjects[0].replace(">", f"ns.obj-{i}")


async def first_and_last(js: JetStreamContext, name: str) -> tuple[int, int]:
    state = (await js.stream_info(name)).state
    return state.first_seq, state.last_seq


async def test_every_stream_is_bounded_with_the_discard_policy_its_docstring_gives(
    nc: Client,
) -> None:
    js = nc.jetstream()
    found = {}
    for name in (EVENTS_STREAM, REQUESTS_STREAM, DEADLETTER_STREAM, LEASES_STREAM):
        config = (await js.stream_info(name)).config
        found[name] = (config.max_bytes, config.discard)
    assert found == {
        EVENTS_STREAM: (6 * GiB, api.DiscardPolicy.OLD),
        REQUESTS_STREAM: (1 * GiB, api.DiscardPolicy.NEW),
        DEADLETTER_STREAM: (768 * 1024**2, api.DiscardPolicy.OLD),
        LEASES_STREAM: (256 * 1024**2, api.DiscardPolicy.NEW),
    }
    assert sum(limit for limit, _ in found.values()) == DEFAULT_MAX_BYTES


async def test_a_full_events_stream_drops_its_oldest_records_first(
    nc: Client, scratch: Callable[[api.StreamConfig], api.StreamConfig]
) -> None:
    js = nc.jetstream()
    config = scratch(events_config(max_bytes=4096))
    await ensure_stream(js, config)
    for i in range(200):
        await js.publish(subject_of(config, i), b"x" * 100)  # never refused
    first, last = await first_and_last(js, str(config.name))
    assert first > 1 and last == 200
    newest = await js.get_last_msg(str(config.name), subject_of(config, 199))
    assert newest.seq == 200


async def test_one_object_changed_in_a_loop_evicts_only_its_own_oldest_records(
    nc: Client, scratch: Callable[[api.StreamConfig], api.StreamConfig]
) -> None:
    """A tenant's object changed in a loop (a script, a controller fighting ours) writes far
    more than the events stream holds: its own oldest records go, and every other object's
    history stays (without the per-object cap the flood evicts them all)."""
    js = nc.jetstream()
    config = scratch(events_config(max_bytes=64 * 1024, per_object=20))
    await ensure_stream(js, config, limits=EVENTS_LIMITS)
    name = str(config.name)
    quiet = [subject_of(config, i) for i in range(5)]
    for quiet_subject in quiet:
        await js.publish(quiet_subject, b"q" * 100)
    loud = subject_of(config, 99)
    acks = [await js.publish(loud, b"x" * 200) for _ in range(800)]  # ~200 KB into 64 KiB
    info = await js.stream_info(name, subjects_filter=">")
    held = info.state.subjects or {}
    assert {s: held.get(s) for s in quiet} == dict.fromkeys(quiet, 1), held
    assert held[loud] == 20  # its newest twenty
    assert (await js.get_last_msg(name, loud)).seq == acks[-1].seq


async def test_a_full_dead_letter_stream_never_refuses_a_dead_letter(
    nc: Client, scratch: Callable[[api.StreamConfig], api.StreamConfig]
) -> None:
    js = nc.jetstream()
    config = scratch(deadletter_config(max_bytes=4096))
    await ensure_stream(js, config)
    for i in range(200):
        await js.publish(subject_of(config, i), b"x" * 100)
    first, last = await first_and_last(js, str(config.name))
    assert first > 1 and last == 200


async def test_a_full_requests_stream_refuses_new_objects_but_never_drops_a_pending_request(
    nc: Client, scratch: Callable[[api.StreamConfig], api.StreamConfig]
) -> None:
    js = nc.jetstream()
    config = scratch(requests_config(max_bytes=4096))
    await ensure_stream(js, config)
    refused: Exception | None = None
    accepted = 0
    for i in range(200):
        try:
            await js.publish(subject_of(config, i), b"{}", headers={"Mcop-Origin": "test"})
            accepted += 1
        except ServiceUnavailableError as err:
            refused = err
            break
    assert refused is not None, "a full requests stream accepted every request"
    assert "maximum bytes exceeded" in str(refused)
    # The publisher's retry is a transient one (the queue drains, then there is room).
    assert as_transient(refused) is not None
    # Every pending request is still there, the first one too.
    info = await js.stream_info(str(config.name), subjects_filter=">")
    assert info.state.messages == accepted
    assert subject_of(config, 0) in (info.state.subjects or {})
    # Once a worker has taken (and acked) one, there is room again.
    consumer = await js.pull_subscribe(subject_of(config, 0), stream=str(config.name))
    (taken,) = await consumer.fetch(1, timeout=5)
    await taken.ack_sync()
    await js.publish(subject_of(config, accepted), b"{}", headers={"Mcop-Origin": "test"})


async def test_ensure_stream_adds_missing_limits_and_never_changes_hand_set_ones(
    nc: Client,
    scratch: Callable[[api.StreamConfig], api.StreamConfig],
    caplog: pytest.LogCaptureFixture,
) -> None:
    js = nc.jetstream()
    ours = scratch(events_config(max_bytes=64 * 1024**2))
    name = str(ours.name)
    # A stream from before the limits existed: no max_bytes.
    await js.add_stream(dataclasses.replace(ours, max_bytes=None))
    assert (await js.stream_info(name)).config.max_bytes == -1

    await ensure_stream(js, ours)
    assert (await js.stream_info(name)).config.max_bytes == 64 * 1024**2

    # The operator raises the byte limit, shortens the age, caps consumers (a field this code
    # does not set) and, by mistake, flips the discard policy.
    hand = dataclasses.replace(
        (await js.stream_info(name)).config,
        max_bytes=128 * 1024**2,
        max_age=3600.0,
        max_consumers=5,
        discard=api.DiscardPolicy.NEW,
    )
    await js.update_stream(hand)
    with caplog.at_level(logging.INFO, logger="memcached_operator.shared.bus.streams"):
        await ensure_stream(js, ours)
        # A smaller limit of ours does not lower the operator's either.
        await ensure_stream(js, dataclasses.replace(ours, max_bytes=1024**2))

    after = (await js.stream_info(name)).config
    assert (after.max_bytes, after.max_age, after.max_consumers) == (128 * 1024**2, 3600.0, 5)
    assert after.discard == api.DiscardPolicy.OLD  # ours: the oldest records go first
    kept = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{name} keeps max_bytes=134217728" in line for line in kept), kept
    assert any(f"{name} keeps max_age=3600.0" in line for line in kept), kept


async def test_the_events_per_object_cap_is_added_when_missing_and_a_hand_set_one_stays(
    nc: Client, scratch: Callable[[api.StreamConfig], api.StreamConfig]
) -> None:
    """An events stream from before the cap gets it from the admin step; one an operator set
    by hand stays, and the services do not count it as a misshaped stream."""
    js = nc.jetstream()
    ours = scratch(events_config(max_bytes=64 * 1024**2))
    name = str(ours.name)
    await js.add_stream(dataclasses.replace(ours, max_msgs_per_subject=-1))
    await ensure_stream(js, ours, limits=EVENTS_LIMITS)
    assert (await js.stream_info(name)).config.max_msgs_per_subject == DEFAULT_EVENTS_PER_OBJECT

    hand = dataclasses.replace((await js.stream_info(name)).config, max_msgs_per_subject=5000)
    await js.update_stream(hand)
    await ensure_stream(js, ours, limits=EVENTS_LIMITS)
    assert (await js.stream_info(name)).config.max_msgs_per_subject == 5000

    # The session's own events stream, capped by hand: still the shape the services need.
    session = (await js.stream_info(EVENTS_STREAM)).config
    assert session.max_msgs_per_subject == DEFAULT_EVENTS_PER_OBJECT
    try:
        await js.update_stream(dataclasses.replace(session, max_msgs_per_subject=5000))
        assert await stream_problems(js, [EVENTS_STREAM]) == []
    finally:
        await js.update_stream(session)


async def test_streams_that_do_not_fit_the_server_store_fail_with_a_clear_error(
    nc: Client, scratch: Callable[[api.StreamConfig], api.StreamConfig]
) -> None:
    js = nc.jetstream()
    config = scratch(deadletter_config(max_bytes=1024 * GiB))
    with pytest.raises(StreamLimitsError, match="STREAM_MAX_BYTES"):
        await ensure_stream(js, config)
