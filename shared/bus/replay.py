"""Reading a stream's history once, from a start point to the end it had when asked.

An ordered push consumer is created for the filter; how many messages it will deliver is
read from its info as delivered + pending (pending alone undercounts: messages already pushed
to the client no longer count as pending), so the reader knows where "the end" is without a
timeout. With `follow`, it keeps yielding new messages after that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig


async def replay(
    js: JetStreamContext,
    filter_subject: str,
    *,
    stream: str,
    config: ConsumerConfig,
    follow: bool = False,
    idle_timeout: float = 30.0,
) -> AsyncIterator[Msg | None]:
    """Yield the matching messages in stream order; with `follow`, yield None once at the
    end of the history, then new messages as they arrive (None again after idle seconds)."""
    sub = await js.subscribe(filter_subject, ordered_consumer=True, config=config, stream=stream)
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        remaining = (info.num_pending or 0) + (delivered or 0)
        while remaining > 0:
            msg = await sub.next_msg(timeout=idle_timeout)
            remaining -= 1
            yield msg
        if not follow:
            return
        yield None
        while True:
            try:
                yield await sub.next_msg(timeout=idle_timeout)
            except TimeoutError:
                yield None
    finally:
        await sub.unsubscribe()
