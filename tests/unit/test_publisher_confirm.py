"""Confirming a flush's pipelined publishes (services/watcher/publisher.py): every stored one is
counted in order, and from the first that failed or got no ack in time, that one and every one
after it is re-sent, in order, with the futures still waiting cancelled. No I/O: the acks are
futures this test resolves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.runtime.progress import Progress
from memcached_operator.watcher import publisher as publisher_module
from memcached_operator.watcher.publisher import Message, Publisher

pytestmark = pytest.mark.unit


@dataclass
class _Ack:
    seq: int
    duplicate: bool = False


class _Js:
    """publish_async hands out futures the test resolves."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    async def publish_async(self, subject: str, body: bytes, **_: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def _messages(n: int) -> list[Message]:
    return [
        Message(
            f"mcop.events.pod.ns.p{i}",
            b"{}",
            {"Nats-Msg-Id": f"id-{i}"},
            "pod.modified",
            ObjectKey("ns", f"p{i}"),
        )
        for i in range(n)
    ]


async def _pipelined(n: int) -> tuple[Publisher, _Js, list[Message], list[list[Message]]]:
    js = _Js()
    publisher = Publisher(js, progress=Progress())  # type: ignore[arg-type]
    resent: list[list[Message]] = []

    async def resend(messages: list[Message]) -> None:
        resent.append(messages)

    publisher._resend = resend  # type: ignore[method-assign]
    messages = _messages(n)
    for message in messages:
        await publisher._pipeline(message)
    return publisher, js, messages, resent


async def test_a_batch_whose_acks_all_came_is_counted_in_order() -> None:
    publisher, js, messages, resent = await _pipelined(4)
    for i, future in enumerate(js.futures):
        future.set_result(_Ack(seq=10 + i))
    await publisher._confirm()
    assert [m.seq for m in messages] == [10, 11, 12, 13]
    assert resent == []


async def test_acks_that_come_while_it_waits_are_counted() -> None:
    publisher, js, messages, resent = await _pipelined(3)
    confirming = asyncio.create_task(publisher._confirm())
    await asyncio.sleep(0.01)
    assert not confirming.done()
    for i, future in enumerate(js.futures):
        future.set_result(_Ack(seq=i + 1))
    await confirming
    assert [m.seq for m in messages] == [1, 2, 3] and resent == []


async def test_from_the_first_failed_publish_on_everything_is_re_sent_in_order() -> None:
    publisher, js, messages, resent = await _pipelined(4)
    js.futures[0].set_result(_Ack(seq=1))
    js.futures[1].set_exception(RuntimeError("the server said no"))
    js.futures[3].set_result(_Ack(seq=4))  # stored, but after a failure: re-sent (harmless)
    await publisher._confirm()
    assert messages[0].seq == 1
    assert resent == [messages[1:]]
    assert js.futures[2].cancelled()


async def test_an_ack_that_never_comes_is_given_up_on_and_the_rest_re_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(publisher_module, "ACK_TIMEOUT", 0.05)
    publisher, js, messages, resent = await _pipelined(3)
    js.futures[0].set_result(_Ack(seq=7))
    js.futures[2].set_result(_Ack(seq=9))
    await asyncio.wait_for(publisher._confirm(), timeout=5)
    assert messages[0].seq == 7
    assert resent == [messages[1:]]
    assert js.futures[1].cancelled()
