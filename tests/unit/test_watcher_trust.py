"""What the watcher believes of a watched object, and which publishes it gives up (no I/O)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError

from memcached_operator.shared.api.contract import OWNER_ANNOTATION
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.runtime.health import liveness_checks
from memcached_operator.shared.runtime.progress import Progress
from memcached_operator.watcher.deadletters import MESSAGE_TOO_LARGE, PERMISSION_DENIED, refusal
from memcached_operator.watcher.owners import (
    INVALID_OWNER_NAME,
    NO_CONTROLLER,
    OWNER_MISMATCH,
    find_owner,
)
from memcached_operator.watcher.publisher import Message, Publisher, message_size

pytestmark = pytest.mark.unit

MEMCACHED_REF = {"apiVersion": "cache.example.com/v1", "kind": "Memcached", "controller": True}


def deployment(*, annotation: str | None = "cache", ref: dict[str, Any] | None = None) -> Any:
    meta: dict[str, Any] = {"name": "cache", "namespace": "ns"}
    if annotation is not None:
        meta["annotations"] = {OWNER_ANNOTATION: annotation}
    if ref is not None:
        meta["ownerReferences"] = [ref]
    return {"metadata": meta}


def pod(*, annotation: str = "cache", rs: str = "cache-5d8f9c7b6", hash_: str = "5d8f9c7b6") -> Any:
    return {
        "metadata": {
            "name": f"{rs}-x2v4q",
            "namespace": "ns",
            "labels": {"pod-template-hash": hash_},
            "annotations": {OWNER_ANNOTATION: annotation},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "controller": True}
            ],
        }
    }


def test_a_deployment_is_owned_by_its_memcached_controller_reference() -> None:
    owner = find_owner("deployment", deployment(ref={**MEMCACHED_REF, "name": "cache"}))
    assert owner.key == ObjectKey("ns", "cache") and not owner.rejected
    # Without the annotation (an older reconciler's Deployment) the reference alone is enough.
    owner = find_owner(
        "deployment", deployment(annotation=None, ref={**MEMCACHED_REF, "name": "c"})
    )
    assert owner.key == ObjectKey("ns", "c")


def test_the_foreign_deployment_of_issue_15_has_no_owner() -> None:
    # Labelled managed-by, annotated with 5,000 characters, owned by nobody.
    owner = find_owner("deployment", deployment(annotation="x" * 5000))
    assert owner.key is None
    assert owner.rejected == INVALID_OWNER_NAME
    assert "(5000 characters)" in owner.detail and len(owner.detail) < 300


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        # An annotation naming a CR, without a controller reference.
        (deployment(annotation="victim"), NO_CONTROLLER),
        # An annotation disagreeing with the controller reference.
        (deployment(annotation="victim", ref={**MEMCACHED_REF, "name": "cache"}), OWNER_MISMATCH),
        # A controller of another kind or group.
        (deployment(ref={**MEMCACHED_REF, "kind": "Other", "name": "cache"}), NO_CONTROLLER),
        (
            deployment(ref={**MEMCACHED_REF, "apiVersion": "evil.io/v1", "name": "cache"}),
            NO_CONTROLLER,
        ),
        # Names that are not Kubernetes names.
        (deployment(annotation="Victim"), INVALID_OWNER_NAME),
        (deployment(annotation="a/b"), INVALID_OWNER_NAME),
        (deployment(annotation=None, ref={**MEMCACHED_REF, "name": "x" * 254}), INVALID_OWNER_NAME),
    ],
)
def test_a_deployment_claiming_an_owner_it_cannot_have_is_rejected(obj: Any, reason: str) -> None:
    owner = find_owner("deployment", obj)
    assert (owner.key, owner.rejected) == (None, reason)


def test_a_deployment_that_claims_nothing_is_not_a_rejection() -> None:
    assert find_owner("deployment", deployment(annotation=None)) == find_owner(
        "deployment", {"metadata": {"namespace": "ns", "name": "x"}}
    )
    assert not find_owner("deployment", deployment(annotation=None)).rejected


def test_a_pod_is_owned_through_its_replica_set_named_after_the_deployment() -> None:
    assert find_owner("pod", pod()).key == ObjectKey("ns", "cache")


def test_a_pod_of_a_253_character_memcached_is_owned_through_the_shortened_replica_set() -> None:
    # The Deployment controller cuts the Deployment's name so that "-<hash>" fits 253.
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    rs = name[: 253 - 1 - len("5d8f9c7b6")] + "-5d8f9c7b6"
    assert len(rs) == 253
    assert find_owner("pod", pod(annotation=name, rs=rs)).key == ObjectKey("ns", name)
    assert find_owner("pod", pod(annotation="e" + name[1:], rs=rs)).key is None


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (pod(annotation="victim"), OWNER_MISMATCH),  # the ReplicaSet is cache-...
        (pod(hash_="other"), OWNER_MISMATCH),
        (pod(annotation="x" * 5000), INVALID_OWNER_NAME),
    ],
)
def test_a_pod_claiming_an_owner_its_replica_set_does_not_have_is_rejected(
    obj: Any, reason: str
) -> None:
    owner = find_owner("pod", obj)
    assert (owner.key, owner.rejected) == (None, reason)


def test_a_bare_pod_with_the_annotation_is_rejected() -> None:
    bare = pod()
    del bare["metadata"]["ownerReferences"]
    assert find_owner("pod", bare).rejected == NO_CONTROLLER
    # A pod cannot borrow a Deployment's owner reference to a Memcached either.
    bare["metadata"]["ownerReferences"] = [{**MEMCACHED_REF, "name": "cache"}]
    assert find_owner("pod", bare).rejected == NO_CONTROLLER


def test_message_size_counts_headers_as_the_server_does() -> None:
    assert message_size({}, b"x" * 10) == 10
    # "NATS/1.0\r\n" + "k: v\r\n" + "\r\n" + body
    assert message_size({"k": "v"}, b"abc") == 10 + 6 + 2 + 3
    # Bytes, not characters: "é" is two in UTF-8.
    assert message_size({"k": "é", "kk": "vv"}, b"") == 10 + 7 + 8 + 2


def test_which_publish_failures_are_for_good() -> None:
    assert refusal(nats.errors.MaxPayloadError(), "mcop.x", None) == MESSAGE_TOO_LARGE
    assert refusal(APIError(code=400, err_code=10054), "mcop.x", None) == MESSAGE_TOO_LARGE
    denied = nats.errors.Error('nats: permissions violation for publish to "mcop.events.pod.ns.p"')
    assert refusal(TimeoutError(), "mcop.events.pod.ns.p", denied) == PERMISSION_DENIED
    # A timeout is transient unless the server said this very subject is denied.
    assert refusal(TimeoutError(), "mcop.events.pod.ns.q", denied) == ""
    assert refusal(TimeoutError(), "mcop.x", None) == ""
    assert refusal(nats.errors.NoRespondersError(), "mcop.x", None) == ""
    assert refusal(nats.errors.ConnectionClosedError(), "mcop.x", None) == ""


def healthz(nc: Any, progress: Progress, stall: float) -> dict[str, str | None]:
    checks = liveness_checks(nc=cast(Client, nc), stall=stall, progress=progress)
    return {name: check() for name, check in checks.items()}


def test_liveness_fails_when_the_nats_client_is_closed_for_good_or_work_stalls() -> None:
    clock = [0.0]
    progress = Progress(clock=lambda: clock[0])
    nc = SimpleNamespace(is_closed=False, last_error=None)
    assert healthz(nc, progress, 60) == {"nats": None, "progress": None}
    progress.waiting("publish", 1)
    clock[0] = 61
    result = healthz(nc, progress, 60)
    assert result["progress"] is not None and "no progress for 61s" in result["progress"]
    assert healthz(nc, progress, 0)["progress"] is None  # the check turned off
    progress.progressed()
    assert healthz(nc, progress, 60)["progress"] is None
    nc.is_closed = True
    nc.last_error = nats.errors.Error("nats: maximum control line exceeded")
    closed = healthz(nc, progress, 60)["nats"]
    assert closed is not None and "maximum control line exceeded" in closed


class FlakyJetStream:
    """Refuses every publish to ``broken`` (as a server that never confirms it would), stores
    the rest; what a unit test needs of JetStreamContext.publish."""

    def __init__(self, broken: str, *, dead_letters_fail: int = 0) -> None:
        self.broken = broken
        self.dead_letters_fail = dead_letters_fail
        self.stored: list[tuple[str, dict[str, str]]] = []

    async def publish(
        self, subject: str, payload: bytes, *, headers: dict[str, str], timeout: float
    ) -> Any:
        if subject == self.broken:
            raise nats.errors.TimeoutError
        if subject.startswith("mcop.deadletter.") and self.dead_letters_fail > 0:
            self.dead_letters_fail -= 1
            raise nats.errors.NoRespondersError
        self.stored.append((subject, headers))
        return SimpleNamespace(duplicate=False)


async def test_a_message_that_keeps_failing_while_connected_is_dead_lettered_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_wait(_delay: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", no_wait)
    subject = "mcop.requests.reconcile.ns.cache"
    js = FlakyJetStream(subject, dead_letters_fail=2)
    progress = Progress()
    publisher = Publisher(
        cast(JetStreamContext, js), max_attempts=3, give_up_after=0.0, progress=progress
    )
    publisher._waiting(+1)
    message = Message(subject, b"", {"Mcop-Origin": "test"}, "", ObjectKey("ns", "cache"))
    await publisher._store(message)
    # Given up after 3 failures; the dead letter is retried until it is stored, the message
    # is tried again in between, and only then the watcher moves on.
    [(target, headers)] = js.stored
    assert target == "mcop.deadletter.watcher.ns.cache"
    assert headers["Mcop-Deadletter-Reason"] == "PublishFailed"
    assert headers["Mcop-Deadletter-Subject"] == subject
    assert progress.pending == 0


class _Refusals:
    """A publisher that records what it is asked to dead-letter."""

    def __init__(self) -> None:
        self.refused: list[tuple[Message, str, str]] = []

    async def refuse(self, message: Message, reason: str, detail: str) -> None:
        self.refused.append((message, reason, detail))


@pytest.mark.parametrize("name", ["big", "n" * 253, "a.b" * 84])
def test_an_oversized_watch_events_record_names_the_object_and_keeps_its_first_bytes(
    name: str,
) -> None:
    # Up to the longest and most dotted names Kubernetes allows: an exception here would end
    # the watch, the very thing the bound prevents.
    from memcached_operator.shared.bus.routing import Router
    from memcached_operator.shared.kube.watchlines import Identity, Oversized
    from memcached_operator.watcher.deadletters import WATCH_EVENT_TOO_LARGE
    from memcached_operator.watcher.emitter import Emitter
    from memcached_operator.watcher.owners import Kind

    refusals = _Refusals()
    emitter = Emitter(cast(Publisher, refusals), Router([]))
    who = Identity("MODIFIED", name, "team-a", "0b1f8c1e-6a4e-4f0e-9a52-9d7a5b0e8c11", "42")
    line = Oversized(size=100_000, prefix=b'{"type":"MODIFIED"', limit=65536)
    asyncio.run(emitter.oversized(Kind("deployment", owned=True), line, who))

    ((message, reason, detail),) = refusals.refused
    assert reason == WATCH_EVENT_TOO_LARGE
    assert message.key == ObjectKey("team-a", name) and message.body == line.prefix
    assert message.headers["ce-name"] == name and message.headers["ce-resourceversion"] == "42"
    assert "100000 bytes" in detail and "at most 65536" in detail
