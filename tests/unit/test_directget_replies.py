"""How a batched direct get reads the replies of its request (the server side is covered by
tests/integration/test_directget.py): messages until the end-of-batch, nothing for a 404, a
server without batches told apart from a passing failure, and what the caller then gets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from memcached_operator.shared.bus import directget
from memcached_operator.shared.bus.directget import DirectGetter, StoredMsg, _Unsupported
from memcached_operator.shared.runtime.errors import TransientError

pytestmark = pytest.mark.unit

NC = Client()  # never connected: only its inbox names are used (a getter holds it weakly)


async def _answer(getter: DirectGetter, *replies: dict[str, str]) -> asyncio.Future[list[Msg]]:
    done: asyncio.Future[list[Msg]] = asyncio.get_running_loop().create_future()
    getter._waiting["7"] = ([], done)
    for headers in replies:
        await getter._on_reply(Msg(NC, subject=f"{getter._prefix}.7", headers=headers))
    return done


async def test_messages_until_the_end_of_the_batch() -> None:
    done = await _answer(
        DirectGetter(NC),
        {"Nats-Subject": "a.1", "Nats-Sequence": "3"},
        {"Nats-Subject": "a.2", "Nats-Sequence": "5"},
        {"Status": "204", "Description": "EOB"},
    )
    assert [m.headers["Nats-Subject"] for m in done.result() if m.headers] == ["a.1", "a.2"]


async def test_no_results_is_an_empty_answer() -> None:
    done = await _answer(DirectGetter(NC), {"Status": "404", "Description": "No Results"})
    assert done.result() == []


async def test_a_message_gone_in_the_middle_of_a_batch_is_not_an_empty_answer() -> None:
    done = await _answer(
        DirectGetter(NC),
        {"Nats-Subject": "a.1", "Nats-Sequence": "3"},
        {"Status": "404", "Description": "Message Not Found"},
    )
    with pytest.raises(TransientError):
        done.result()


async def test_a_server_without_batches_is_told_apart() -> None:
    done = await _answer(DirectGetter(NC), {"Status": "408", "Description": "Empty Request"})
    with pytest.raises(_Unsupported):
        done.result()


async def test_other_failures_are_transient() -> None:
    done = await _answer(DirectGetter(NC), {"Status": "503"})
    with pytest.raises(TransientError):
        done.result()


async def test_a_late_reply_touches_no_other_request() -> None:
    getter = DirectGetter(NC)
    done = await _answer(getter)
    late = Msg(NC, subject=f"{getter._prefix}.99", headers={"Status": "204"})
    await getter._on_reply(late)  # token 99 gave up already
    assert not done.done()
    assert getter._waiting["7"][0] == []


class _Server:
    """Answers each batch request the way a server would, through the getter's reply route."""

    def __init__(self, getter: DirectGetter, *, answer: dict[str, str] | None) -> None:
        self.getter = getter
        self.answer = answer
        self.requests = 0

    async def publish(self, subject: str, body: bytes, reply: str = "") -> None:
        self.requests += 1
        if self.answer is not None:
            await self.getter._on_reply(Msg(NC, subject=reply, headers=self.answer))


@pytest.fixture
def one_by_one(monkeypatch: pytest.MonkeyPatch) -> list[Sequence[str]]:
    calls: list[Sequence[str]] = []

    async def fake(js: Any, stream: str, subjects: Sequence[str]) -> dict[str, StoredMsg]:
        calls.append(subjects)
        return {s: StoredMsg(s, 1, {}, b"") for s in subjects}

    monkeypatch.setattr(directget, "_one_by_one", fake)
    return calls


def _getter_with(
    monkeypatch: pytest.MonkeyPatch, answer: dict[str, str] | None, **kwargs: Any
) -> tuple[DirectGetter, _Server]:
    getter = DirectGetter(NC, **kwargs)
    server = _Server(getter, answer=answer)
    monkeypatch.setattr(NC, "publish", server.publish)

    async def subscribed(nc: Client) -> None:
        return None

    monkeypatch.setattr(getter, "_subscribe", subscribed)
    return getter, server


async def test_without_batches_it_reads_one_subject_at_a_time_from_then_on(
    monkeypatch: pytest.MonkeyPatch, one_by_one: list[Sequence[str]]
) -> None:
    getter, server = _getter_with(monkeypatch, {"Status": "408", "Description": "Empty Request"})
    js = NC.jetstream()
    assert set(await getter.last_msgs(js, "S", ["a.1", "a.2"])) == {"a.1", "a.2"}
    assert set(await getter.last_msgs(js, "S", ["a.3"])) == {"a.3"}
    assert not getter.batched
    assert server.requests == 1  # not asked again
    assert one_by_one == [["a.1", "a.2"], ["a.3"]]


async def test_an_unanswered_first_batch_is_read_one_by_one_and_retried_later(
    monkeypatch: pytest.MonkeyPatch, one_by_one: list[Sequence[str]]
) -> None:
    getter, server = _getter_with(monkeypatch, None, timeout=0.05)
    js = NC.jetstream()
    assert set(await getter.last_msgs(js, "S", ["a.1"])) == {"a.1"}
    await getter.last_msgs(js, "S", ["a.2"])
    assert server.requests == 1  # one subject at a time for a while
    getter._batch_after = 0.0  # ... and once that while is over, a batch again
    await getter.last_msgs(js, "S", ["a.3"])
    assert server.requests == 2
    assert getter.batched


async def test_once_batches_were_answered_a_silent_one_is_transient(
    monkeypatch: pytest.MonkeyPatch, one_by_one: list[Sequence[str]]
) -> None:
    getter, server = _getter_with(monkeypatch, {"Status": "404", "Description": "No Results"})
    js = NC.jetstream()
    assert await getter.last_msgs(js, "S", ["a.1"]) == {}
    server.answer = None
    getter._timeout = 0.05
    with pytest.raises(TransientError):
        await getter.last_msgs(js, "S", ["a.1"])
    assert one_by_one == []


class _Replicas(DirectGetter):
    """A getter whose batches are answered by replicas holding up to the given sequences."""

    def __init__(self, *up_to: int, replicated: bool = True, empty: bool = False) -> None:
        super().__init__(NC)
        self.answers = list(up_to)
        self.asked = 0
        self.replicated = replicated
        self.empty = empty  # answer "no results" (which says no sequence)

    async def _is_replicated(self, js: Any, stream: str) -> bool:
        return self.replicated

    async def _batch(self, js: Any, stream: str, subjects: Sequence[str]) -> Any:
        self.asked += 1
        if self.empty:
            return {}, 0
        up_to = self.answers.pop(0)
        return {"a.1": StoredMsg("a.1", up_to, {}, b"")}, up_to


async def test_an_answer_from_a_replica_behind_the_barrier_is_asked_again() -> None:
    getter = _Replicas(4, 6, 9)
    found = await getter.last_msgs(None, "S", ["a.1"], at_least=9)  # type: ignore[arg-type]
    assert getter.asked == 3
    assert found["a.1"].seq == 9


async def test_replicas_that_stay_behind_are_a_transient_failure() -> None:
    getter = _Replicas(*[4] * len(directget.BEHIND_RETRIES))
    with pytest.raises(directget.ReplicaBehind):
        await getter.last_msgs(None, "S", ["a.1"], at_least=9)  # type: ignore[arg-type]
    assert getter.asked == len(directget.BEHIND_RETRIES)


async def test_without_a_barrier_any_replica_answers() -> None:
    getter = _Replicas(4)
    found = await getter.last_msgs(None, "S", ["a.1"])  # type: ignore[arg-type]
    assert found["a.1"].seq == 4 and getter.asked == 1


async def test_the_end_of_batch_says_up_to_which_sequence() -> None:
    getter = DirectGetter(NC)
    done = await _answer(
        getter,
        {"Nats-Subject": "a.1", "Nats-Sequence": "3"},
        {"Status": "204", "Description": "EOB", "Nats-UpTo-Sequence": "12"},
    )
    assert len(done.result()) == 1
    assert getter._up_to["7"] == 12


class _EmptyThenFound(DirectGetter):
    """A replica behind answers "no results" for a subject it does not hold yet."""

    def __init__(self) -> None:
        super().__init__(NC)
        self.asked = 0

    async def _batch(self, js: Any, stream: str, subjects: Sequence[str]) -> Any:
        self.asked += 1
        if self.asked == 1:
            return {}, 0
        return {"a.1": StoredMsg("a.1", 9, {}, b"")}, 9


async def test_no_results_from_a_replica_is_asked_again_under_a_barrier() -> None:
    getter = _EmptyThenFound()
    found = await getter.last_msgs(None, "S", ["a.1"], at_least=9)  # type: ignore[arg-type]
    assert found["a.1"].seq == 9 and getter.asked == 2


async def test_on_a_stream_of_one_replica_every_answer_is_current() -> None:
    getter = _Replicas(4, replicated=False)
    found = await getter.last_msgs(None, "S", ["a.1"], at_least=9)  # type: ignore[arg-type]
    assert found["a.1"].seq == 4 and getter.asked == 1


async def test_nothing_found_is_believed_after_a_few_quick_asks() -> None:
    """A subject without messages (a deleted CR's, events aged out) must not cost every read
    the barrier's full 1.5 s: a status service behind a deleted namespace stalled on it."""
    getter = _Replicas(empty=True)
    found = await getter.last_msgs(None, "S", ["a.1"], at_least=9)  # type: ignore[arg-type]
    assert found == {}
    assert getter.asked == len(directget.EMPTY_RETRIES) < len(directget.BEHIND_RETRIES)
