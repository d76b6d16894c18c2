"""Reads shared by the callers that asked before they were sent: at most one in flight per key.

A read-your-writes barrier ("which sequence is newest on the stream now?") answers every caller
that asked before the read went out: whatever they wait for was stored before they asked, so
it is at or below what the read returns. Many callers at once (sixteen status refreshes of one
namespace, each needing the pod index's barrier) need not send a read each. :class:`Coalesced`
keeps at most one read in flight per key. A caller that arrives while one is in flight does
not join it (it was sent before the caller asked, and may miss what the caller waits for): it
waits for the next read, which goes out when the one in flight returns and answers everyone
who arrived meanwhile. So each answer comes from a read sent after its caller asked, a caller
waits at most for one read in flight and its own, and any number of callers at once costs two
reads instead of one each.

A read that fails fails every caller waiting for it; the next caller starts a new one. The
table holds only keys with a read in flight or wanted, so it cannot grow with the keys seen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Slot(Generic[V]):
    # The answer of the next read, for the callers that arrived since the last one went out.
    wanted: asyncio.Future[V] | None = None
    # The task sending reads for this key while any are wanted.
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def _retrieved(future: asyncio.Future[V]) -> None:
    # Every caller may have stopped waiting (their own timeout): the error was still seen.
    if not future.cancelled():
        future.exception()


class Coalesced(Generic[K, V]):
    """``await coalesced(key)``: ``read(key)``'s answer from a read sent after the call."""

    def __init__(self, read: Callable[[K], Awaitable[V]]) -> None:
        self._read = read
        self._slots: dict[K, _Slot[V]] = {}
        self.reads = 0  # reads sent so far

    def in_flight(self) -> int:
        """Keys with a read in flight or wanted."""
        return len(self._slots)

    async def __call__(self, key: K) -> V:
        slot = self._slots.setdefault(key, _Slot())
        if slot.wanted is None:
            slot.wanted = asyncio.get_running_loop().create_future()
            slot.wanted.add_done_callback(_retrieved)
        future = slot.wanted
        if slot.task is None:
            slot.task = asyncio.create_task(self._send(key, slot), name=f"coalesced-read-{key}")
        # Shielded: a caller that stops waiting does not cancel the others' read.
        return await asyncio.shield(future)

    async def _send(self, key: K, slot: _Slot[V]) -> None:
        future: asyncio.Future[V] | None = None
        try:
            while slot.wanted is not None:
                future, slot.wanted = slot.wanted, None
                self.reads += 1
                try:
                    value = await self._read(key)
                except Exception as err:
                    future.set_exception(err)
                else:
                    future.set_result(value)
                future = None
        finally:
            # Cancelled (the service is stopping): nobody is left to answer these callers.
            for pending in (future, slot.wanted):
                if pending is not None and not pending.done():
                    pending.cancel()
            slot.wanted = None
            slot.task = None
            with contextlib.suppress(KeyError):
                if self._slots[key] is slot:
                    del self._slots[key]
