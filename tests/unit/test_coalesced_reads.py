"""Shared barrier reads (shared/runtime/coalesce.py): many callers at once cost two reads, and
no caller is answered by a read that went out before it asked — the property the pod index's
barrier needs (a refresh must see every pod change stored before its request). The "stream"
is a counter that writers bump; a read returns the counter as it was when the read went out."""

from __future__ import annotations

import asyncio

import pytest

from memcached_operator.shared.runtime.coalesce import Coalesced

pytestmark = pytest.mark.unit


class Stream:
    """The newest sequence per namespace; a read holds until released, like a round trip."""

    def __init__(self) -> None:
        self.newest = 0
        self.sent = 0
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def read(self, namespace: str) -> int:
        self.sent += 1
        seen = self.newest  # what the server holds when the request reaches it
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return seen


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_callers_at_once_share_two_reads_and_each_sees_what_was_stored_before_it_asked():
    stream = Stream()
    barrier = Coalesced(stream.read)
    first = asyncio.create_task(barrier("ns"))
    await settle()  # its read is out
    # Sixteen refreshes whose changes were stored while that read was in flight.
    later: list[tuple[int, asyncio.Task[int]]] = []
    for _ in range(16):
        stream.newest += 1
        later.append((stream.newest, asyncio.create_task(barrier("ns"))))
        await settle()
    stream.gate.set()
    assert await first == 0
    for needed, task in later:
        # Joining the read in flight would answer 0 here and let the refresh miss its pod.
        assert await task >= needed
    assert stream.sent == 2
    assert barrier.reads == 2
    assert barrier.in_flight() == 0  # nothing kept once answered


async def test_keys_do_not_wait_for_each_other():
    stream = Stream()
    barrier = Coalesced(stream.read)
    tasks = [asyncio.create_task(barrier(ns)) for ns in ("a", "b", "c")]
    await settle()
    assert stream.sent == 3
    stream.gate.set()
    assert await asyncio.gather(*tasks) == [0, 0, 0]


async def test_a_failed_read_fails_its_callers_and_the_next_caller_reads_again():
    stream = Stream()
    barrier = Coalesced(stream.read)
    stream.fail = TimeoutError("no answer")
    tasks = [asyncio.create_task(barrier("ns")) for _ in range(3)]
    await settle()
    stream.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    stream.fail = None
    stream.newest = 7
    assert await barrier("ns") == 7
    assert stream.sent == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_read_of_the_others():
    stream = Stream()
    barrier = Coalesced(stream.read)
    impatient = asyncio.create_task(asyncio.wait_for(barrier("ns"), timeout=0.01))
    patient = asyncio.create_task(barrier("ns"))
    with pytest.raises(TimeoutError):
        await impatient
    stream.newest = 3
    stream.gate.set()
    assert await patient == 0  # the read went out before the counter moved
    assert stream.sent == 1
