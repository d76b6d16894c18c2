"""How a batched direct get reads the replies of its request (the server side is covered by
tests/integration/test_directget.py): messages until the end-of-batch, nothing for a 404, and
a server without batches told apart from a passing failure."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.directget import DirectGetter, _Unsupported
from shared.errors import TransientError

pytestmark = pytest.mark.unit


def _getter() -> DirectGetter:
    nc = Client()  # never connected: only its inbox names are used
    return DirectGetter(nc, nc.jetstream())


async def _answer(getter: DirectGetter, *replies: dict[str, str]) -> asyncio.Future[list[Msg]]:
    done: asyncio.Future[list[Msg]] = asyncio.get_running_loop().create_future()
    getter._waiting["7"] = ([], done)
    for headers in replies:
        await getter._on_reply(Msg(getter._nc, subject=f"{getter._prefix}.7", headers=headers))
    return done


async def test_messages_until_the_end_of_the_batch() -> None:
    getter = _getter()
    done = await _answer(
        getter,
        {"Nats-Subject": "a.1", "Nats-Sequence": "3"},
        {"Nats-Subject": "a.2", "Nats-Sequence": "5"},
        {"Status": "204", "Description": "EOB"},
    )
    assert [m.headers["Nats-Subject"] for m in done.result() if m.headers] == ["a.1", "a.2"]


async def test_no_results_is_an_empty_answer() -> None:
    done = await _answer(_getter(), {"Status": "404", "Description": "No Results"})
    assert done.result() == []


async def test_a_server_without_batches_is_told_apart() -> None:
    done = await _answer(_getter(), {"Status": "408", "Description": "Empty Request"})
    with pytest.raises(_Unsupported):
        done.result()


async def test_other_failures_are_transient() -> None:
    done = await _answer(_getter(), {"Status": "503"})
    with pytest.raises(TransientError):
        done.result()


async def test_replies_after_the_caller_gave_up_are_dropped() -> None:
    getter = _getter()
    msg = Msg(getter._nc, subject=f"{getter._prefix}.99", headers={"Nats-Subject": "a"})
    await getter._on_reply(msg)  # no one waits for token 99: nothing happens
    assert getter._waiting == {}
