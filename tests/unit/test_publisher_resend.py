"""Re-sending after a failed pipelined publish keeps each object's newest event the newest of
its subject (services/watcher/publisher.py). A node that dies between two publishes can leave a
later event stored and the earlier ones not: the re-send must not store the older states after
the newer one (the stream would then show the object as it was before), and the message id that
makes re-sends harmless must not hide the newer one when it has to be stored again. Nor may it
lose a change that can still be stored in order: when none of an object's events got through,
every one of them is re-sent. The stream here is a list with JetStream's de-duplication by
message id and its direct get of a subject's newest message; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.runtime.progress import Progress
from memcached_operator.watcher.publisher import Message, Publisher

pytestmark = pytest.mark.unit

KEY = ObjectKey("ns", "a")
SUBJECT = "mcop.events.deployment.ns.a"


@dataclass
class _Ack:
    seq: int
    duplicate: bool = False


class _Stream:
    def __init__(self) -> None:
        self.stored: list[tuple[str, str, bytes]] = []
        self.ids: dict[str, int] = {}
        self.asked = 0

    async def publish(
        self, subject: str, body: bytes, *, headers: dict[str, str], **_: Any
    ) -> _Ack:
        msg_id = headers["Nats-Msg-Id"]
        if msg_id in self.ids:
            return _Ack(self.ids[msg_id], duplicate=True)
        self.stored.append((subject, msg_id, body))
        self.ids[msg_id] = len(self.stored)
        return _Ack(len(self.stored))

    async def get_last_msg(self, stream: str, subject: str, *, direct: bool) -> Any:
        """The direct get the re-send asks before skipping anything."""
        self.asked += 1
        found = [msg_id for s, msg_id, _ in self.stored if s == subject]
        if not found:
            raise NotFoundError()
        return SimpleNamespace(headers={"Nats-Msg-Id": found[-1]})

    def newest(self, subject: str) -> bytes:
        return [body for s, _, body in self.stored if s == subject][-1]


def _event(rv: int, change: str = "modified") -> Message:
    return Message(SUBJECT, b"rv%d" % rv, {"Nats-Msg-Id": f"id-{rv}"}, f"deployment.{change}", KEY)


async def test_older_modifications_are_not_stored_after_a_newer_one() -> None:
    stream = _Stream()
    await stream.publish(SUBJECT, b"rv4", headers={"Nats-Msg-Id": "id-4"})  # got through
    publisher = Publisher(stream, progress=Progress())  # type: ignore[arg-type]
    await publisher._resend([_event(1), _event(2), _event(3), _event(4)])
    assert stream.newest(SUBJECT) == b"rv4"
    assert [body for _, _, body in stream.stored] == [b"rv4"]


async def test_an_added_event_is_re_sent_and_the_newer_state_stored_after_it() -> None:
    stream = _Stream()
    await stream.publish(SUBJECT, b"rv2", headers={"Nats-Msg-Id": "id-2"})  # got through
    publisher = Publisher(stream, progress=Progress())  # type: ignore[arg-type]
    await publisher._resend([_event(1, "added"), _event(2)])
    assert [body for _, _, body in stream.stored] == [b"rv2", b"rv1", b"rv2"]
    assert stream.newest(SUBJECT) == b"rv2"


async def test_a_re_send_of_what_never_got_through_stores_each_once() -> None:
    stream = _Stream()
    publisher = Publisher(stream, progress=Progress())  # type: ignore[arg-type]
    await publisher._resend([_event(1, "added"), _event(2)])
    assert [body for _, _, body in stream.stored] == [b"rv1", b"rv2"]


async def test_an_added_event_already_stored_does_not_store_the_newer_one_twice() -> None:
    stream = _Stream()
    await stream.publish(SUBJECT, b"rv1", headers={"Nats-Msg-Id": "id-1"})
    await stream.publish(SUBJECT, b"rv2", headers={"Nats-Msg-Id": "id-2"})
    publisher = Publisher(stream, progress=Progress())  # type: ignore[arg-type]
    await publisher._resend([_event(1, "added"), _event(2)])
    assert [body for _, _, body in stream.stored] == [b"rv1", b"rv2"]


async def test_a_re_send_of_modifications_that_never_got_through_loses_none() -> None:
    """A NATS restart in the middle of a flush: every change of the object is still stored,
    once each and in order (the stream holds none of them, so nothing forces a skip)."""
    stream = _Stream()
    await stream.publish(SUBJECT, b"rv0", headers={"Nats-Msg-Id": "id-0"})  # an earlier flush
    publisher = Publisher(stream, progress=Progress())  # type: ignore[arg-type]
    await publisher._resend([_event(1), _event(2), _event(3)])
    assert [body for _, _, body in stream.stored] == [b"rv0", b"rv1", b"rv2", b"rv3"]


async def test_only_the_modifications_before_the_one_stored_are_skipped() -> None:
    stream = _Stream()
    await stream.publish(SUBJECT, b"rv2", headers={"Nats-Msg-Id": "id-2"})  # got through
    publisher = Publisher(stream, progress=Progress())  # type: ignore[arg-type]
    await publisher._resend([_event(1), _event(2), _event(3), _event(4)])
    # rv1 cannot follow rv2 in order; rv3 and rv4 can, and are not lost.
    assert [body for _, _, body in stream.stored] == [b"rv2", b"rv3", b"rv4"]
    assert stream.asked == 1  # one read for the object, not one per event
