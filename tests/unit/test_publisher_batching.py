"""The watcher's publisher holds events until the next flush and publishes them together
(services/watcher/publisher.py): at the burst's trickle of a few changes per event-loop turn,
one write per change cost the watcher and nats-server most of their CPU. What must hold
however the flushes fall: every event is stored, in order, and a request is published only
after the event it follows is stored, carrying that event's sequence — also a request queued
while a flush is waiting for acknowledgements. The stream here records publishes and acks them
when told; no I/O."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events.state import AFTER_HEADER
from memcached_operator.shared.runtime.progress import Progress
from memcached_operator.watcher.publisher import Message, Publisher

pytestmark = pytest.mark.unit


@dataclass
class _Ack:
    seq: int
    duplicate: bool = False


class _Stream:
    """publish_async stores at once and acks when :meth:`release` is called (or at once)."""

    def __init__(self, *, hold: bool = False) -> None:
        self.log: list[tuple[str, dict[str, str]]] = []
        self.hold = hold
        self._held: list[tuple[asyncio.Future[_Ack], int]] = []

    async def publish_async(
        self, subject: str, body: bytes, *, headers: dict[str, str], **_: Any
    ) -> asyncio.Future[_Ack]:
        self.log.append((subject, dict(headers)))
        future: asyncio.Future[_Ack] = asyncio.get_running_loop().create_future()
        if self.hold:
            self._held.append((future, len(self.log)))
        else:
            future.set_result(_Ack(len(self.log)))
        return future

    def release(self) -> None:
        self.hold = False
        for future, seq in self._held:
            future.set_result(_Ack(seq))
        self._held.clear()


def _event(name: str) -> Message:
    key = ObjectKey("ns", name)
    return Message(f"mcop.events.pod.ns.{name}", b"{}", {"Nats-Msg-Id": name}, "pod.modified", key)


def _request(name: str) -> Message:
    return Message(f"mcop.requests.status.ns.{name}", b"", {}, "", ObjectKey("ns", name))


def _seq_of(stream: _Stream, subject: str) -> int:
    return next(i for i, (s, _) in enumerate(stream.log, start=1) if s == subject)


async def test_events_wait_for_the_flush_and_go_out_together_in_order() -> None:
    stream = _Stream()
    publisher = Publisher(stream, progress=Progress())  # type: ignore[arg-type]
    for name in ("a", "b", "c"):
        await publisher.send(_event(name))
    assert stream.log == []  # nothing written per change
    await publisher.flush()
    assert [s for s, _ in stream.log] == [f"mcop.events.pod.ns.{n}" for n in "abc"]


async def test_a_full_batch_is_published_without_waiting_for_the_flusher() -> None:
    stream = _Stream()
    publisher = Publisher(stream, batch=2, progress=Progress())  # type: ignore[arg-type]
    await publisher.send(_event("a"))
    await publisher.send(_event("b"))
    assert len(stream.log) == 2


async def test_a_request_queued_during_a_flush_follows_its_own_event() -> None:
    stream = _Stream(hold=True)
    publisher = Publisher(stream, progress=Progress())  # type: ignore[arg-type]
    await publisher.send(_event("a"))
    await publisher.send(_request("a"))
    flushing = asyncio.create_task(publisher.flush())
    await asyncio.sleep(0)  # the flush has published event a and waits for its ack
    assert [s for s, _ in stream.log] == ["mcop.events.pod.ns.a"]
    # Meanwhile the informer goes on: event b, and the request that must come after it.
    await publisher.send(_event("b"))
    await publisher.send(_request("b"))
    stream.release()
    await flushing
    await publisher.flush()
    subjects = [s for s, _ in stream.log]
    assert subjects.index("mcop.requests.status.ns.b") > subjects.index("mcop.events.pod.ns.b")
    headers = dict(stream.log)
    assert headers["mcop.requests.status.ns.a"][AFTER_HEADER] == str(
        _seq_of(stream, "mcop.events.pod.ns.a")
    )
    assert headers["mcop.requests.status.ns.b"][AFTER_HEADER] == str(
        _seq_of(stream, "mcop.events.pod.ns.b")
    )
