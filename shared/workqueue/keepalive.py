"""While a handler runs: in-progress acks for its request and refreshes of the object's lease.

A run keeps two things alive: its request (JetStream redelivers a message not acked within
``ack_wait``) and its per-object lease (another worker may take an object whose lease outlived
its TTL). :func:`keep_alive` does both every third of the shorter of the two, and cancels the
handler when the lease turns out to be lost (someone else holds the object now). It ends when
the handler does, not only when cancelled: on Python 3.11 a library's ``wait_for`` can swallow
a cancellation (when the reply it waits for arrives at the same moment), and a keep-alive that
outlived its handler would hold its request in progress for ever.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import nats.errors

from memcached_operator.shared.workqueue.lease import Held, LeaseLost

log = logging.getLogger("memcached_operator.shared.workqueue.queue")


class InProgress(Protocol):
    """The message of the request being run (nats-py's ``Msg``)."""

    async def in_progress(self) -> None: ...


class Refreshing(Protocol):
    """The lease store (lease.py's ``Leases``)."""

    ttl: float

    async def refresh(self, name: str, revision: int, value: bytes) -> int: ...


async def keep_alive(
    msg: InProgress,
    held: Held,
    handler_task: asyncio.Task[Any],
    *,
    leases: Refreshing,
    ack_wait: float,
) -> None:
    """Until ``handler_task`` is done: mark ``msg`` in progress and refresh ``held``; on a
    lost lease, set ``held.lost`` and cancel the handler."""
    interval = min(ack_wait, leases.ttl) / 3
    while not handler_task.done():
        await asyncio.wait({handler_task}, timeout=interval)
        if handler_task.done():
            return
        try:
            await msg.in_progress()
        except nats.errors.Error as err:
            log.debug("in-progress ack failed: %r", err)  # only brings a redelivery closer
        try:
            held.revision = await leases.refresh(held.name, held.revision, held.value)
        except LeaseLost:
            held.lost = True
            handler_task.cancel()
            return
        except Exception as err:
            log.warning("could not refresh lease %s (retrying): %r", held.name, err)
