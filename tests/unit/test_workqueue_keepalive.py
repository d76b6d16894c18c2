"""The keep-alive of a run (in-progress acks, lease refreshes) ends with its handler.

A 3-node chaos run left one status request in progress for ever: its handler had finished, the
runner cancelled the keep-alive while it refreshed the lease, and the refresh swallowed the
cancellation (Python 3.11's ``asyncio.wait_for`` does when the awaited reply arrives at the same
moment). The keep-alive then went on marking the request in progress every few seconds, so it
was never redelivered and its worker never took another.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from memcached_operator.shared.workqueue.keepalive import keep_alive
from memcached_operator.shared.workqueue.lease import Held, LeaseLost

pytestmark = pytest.mark.unit


class _Msg:
    def __init__(self) -> None:
        self.in_progress_sent = 0

    async def in_progress(self) -> None:
        self.in_progress_sent += 1


class _SwallowingLeases:
    """A lease refresh that, cancelled the first time while it waits for its reply, returns
    anyway; later refreshes answer at once."""

    ttl = 0.03

    def __init__(self) -> None:
        self.refreshing = asyncio.Event()
        self.swallowed = False

    async def refresh(self, name: str, revision: int, value: bytes) -> int:
        if self.swallowed:
            return revision + 1
        self.refreshing.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.swallowed = True  # the reply and the cancellation met: the reply won
        return revision + 1


async def test_the_keep_alive_ends_with_its_handler_even_if_its_cancellation_is_lost() -> None:
    leases, msg, finish = _SwallowingLeases(), _Msg(), asyncio.Event()
    handler_task: asyncio.Task[Any] = asyncio.create_task(finish.wait())
    keep = asyncio.create_task(
        keep_alive(msg, Held("lease", 1, b""), handler_task, leases=leases, ack_wait=0.03)
    )
    await asyncio.wait_for(leases.refreshing.wait(), timeout=5)
    finish.set()
    await handler_task
    keep.cancel()  # as the runner does once the handler is done
    done, _ = await asyncio.wait({keep}, timeout=2)
    assert keep in done, "the keep-alive outlived its handler: the request stays in progress"
    sent = msg.in_progress_sent
    await asyncio.sleep(0.1)
    assert msg.in_progress_sent == sent


class _LostLeases:
    ttl = 0.03

    async def refresh(self, name: str, revision: int, value: bytes) -> int:
        raise LeaseLost(name)


async def test_a_lost_lease_cancels_the_handler_and_marks_the_run() -> None:
    held, msg = Held("lease", 1, b""), _Msg()
    handler_task: asyncio.Task[Any] = asyncio.create_task(asyncio.sleep(10))
    await asyncio.wait_for(
        keep_alive(msg, held, handler_task, leases=_LostLeases(), ack_wait=0.03), timeout=5
    )
    assert held.lost
    with pytest.raises(asyncio.CancelledError):
        await handler_task
    assert msg.in_progress_sent == 1
