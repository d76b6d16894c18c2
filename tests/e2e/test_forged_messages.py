"""Issue 16: no forged message moves a Deployment.

Each attack is made with the credentials of the service that may publish on the subject (the
watcher for events, the reconciler for outcomes): a stolen password. The pipeline runs as real
processes against the real API server; every attack ends in the dead-letter stream or in the
``mcop_messages_distrusted_total`` counter with the reason, and the API server sees no write
to the victim's Deployment (its spec and generation do not move) and none in another namespace.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import nats
import pytest

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.connection import inbox_prefix
from memcached_operator.shared.bus.streams import DEADLETTER_STREAM, EVENTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.shared.workqueue.queue import enqueue
from memcached_operator.shared.workqueue.types import ORIGIN
from tests.conftest import Cluster, free_port
from tests.support import Services, metric, read_stream, wait_for

pytestmark = pytest.mark.e2e

VICTIM = "victim"
FORGED_IMAGE = "registry.example/evil:1"


async def _as_user(cluster: Cluster, user: str) -> nats.aio.client.Client:
    creds = cluster.layout.nats_credentials(user)
    return await nats.connect(
        creds["NATS_URL"],
        user=creds.get("NATS_USER"),
        password=creds.get("NATS_PASSWORD"),
        inbox_prefix=inbox_prefix(user),
    )


async def _newest_event(cluster: Cluster, key: ObjectKey) -> tuple[dict[str, str], Any]:
    nc = await nats.connect(cluster.nats_url)
    try:
        msg = await nc.jetstream().get_last_msg(
            EVENTS_STREAM, subjects.subject(subjects.EVENTS, "memcached", key)
        )
        return dict(msg.headers or {}), json.loads(msg.data or b"{}")
    finally:
        await nc.close()


async def _forge_event(
    cluster: Cluster, key: ObjectKey, headers: dict[str, str], body: dict[str, Any]
) -> None:
    """Publish ``body`` as the newest event of ``key`` (as the watcher user), then a reconcile
    request for it."""
    nc = await _as_user(cluster, "watcher")
    try:
        js = nc.jetstream()
        forged = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
        forged[events.MSG_ID] = f"forged-{uuid.uuid4()}"
        await js.publish(
            subjects.subject(subjects.EVENTS, "memcached", key),
            json.dumps(body).encode(),
            headers=forged,
        )
        await enqueue(js, controller="reconcile", key=key, headers={ORIGIN: "test:forged"})
    finally:
        await nc.close()


def _dead_letters(cluster: Cluster, namespace: str) -> list[Any]:
    filter_ = f"{subjects.PREFIX}.{subjects.DEADLETTER}.*.{subjects.encode_token(namespace)}.*"
    return asyncio.run(read_stream(cluster.nats_url, filter_, stream=DEADLETTER_STREAM))


def _distrusted(port: int, controller: str, reason: str) -> float:
    return metric(port, "mcop_messages_distrusted_total", controller=controller, reason=reason)


def _deployment(cluster: Cluster, namespace: str, name: str = VICTIM) -> dict[str, Any] | None:
    got = cluster.kubectl(
        "get", "deployment", "-n", namespace, name, "-o", "json", "--ignore-not-found"
    ).stdout
    return json.loads(got) if got.strip() else None


@pytest.fixture
def ports() -> dict[str, int]:
    """The health (and metrics) port of each service the test starts."""
    return {"watcher": free_port(), "reconciler": free_port(), "status": free_port()}


@pytest.fixture
def victim(
    cluster: Cluster, service_procs: Services, namespace: str, ports: dict[str, int]
) -> dict[str, Any]:
    service_procs.start(
        "watcher", "--namespaces", namespace, "--health-port", str(ports["watcher"]), name="watcher"
    )
    service_procs.start("reconciler", "--health-port", str(ports["reconciler"]), name="reconciler")
    cluster.apply_memcached(namespace, VICTIM, {"size": 1})
    return wait_for(
        lambda: _deployment(cluster, namespace), timeout=90, what="the victim's Deployment"
    )


def _assert_untouched(cluster: Cluster, namespace: str, before: dict[str, Any]) -> None:
    after = _deployment(cluster, namespace)
    assert after is not None
    # The Deployment controller keeps writing its status; a write of ours would change the
    # spec and with it the generation.
    assert after["metadata"]["generation"] == before["metadata"]["generation"], (
        "the forged message reached the API server as a Deployment write"
    )
    assert after["spec"] == before["spec"]
    image = after["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image != FORGED_IMAGE


def _wait_letter(cluster: Cluster, namespace: str, count: int) -> Any:
    return wait_for(
        lambda: (d := _dead_letters(cluster, namespace)) and len(d) >= count and d[count - 1],
        timeout=60,
        what=f"dead letter #{count}",
    )


def _other_namespace(body: dict[str, Any]) -> None:
    body["metadata"]["namespace"] = "kube-system"


def _other_spec(body: dict[str, Any]) -> None:
    pass  # only the image changes: same namespace, uid and resourceVersion


def _other_uid(body: dict[str, Any]) -> None:
    body["metadata"]["uid"] = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("forge", "error", "what"),
    [
        (_other_namespace, "carries the object kube-system/victim", "key"),
        (_other_spec, "differs from the API server's object in spec", "content"),
        (_other_uid, "claims uid", "uid"),
    ],
    ids=["namespace", "spec", "uid"],
)
def test_a_forged_event_is_dead_lettered_and_writes_nothing(
    cluster: Cluster,
    service_procs: Services,
    namespace: str,
    victim: dict[str, Any],
    ports: dict[str, int],
    forge: Callable[[dict[str, Any]], None],
    error: str,
    what: str,
) -> None:
    key = ObjectKey(namespace, VICTIM)
    headers, body = asyncio.run(_newest_event(cluster, key))
    forge(body)
    body["spec"]["image"] = FORGED_IMAGE
    asyncio.run(_forge_event(cluster, key, headers, body))
    letter = _wait_letter(cluster, namespace, 1)
    assert letter.headers["Mcop-Deadletter-Reason"] == "ForgedEvent"
    assert error in letter.headers["Mcop-Deadletter-Error"]
    assert _deployment(cluster, "kube-system") is None
    _assert_untouched(cluster, namespace, victim)
    assert _distrusted(ports["reconciler"], "reconcile", what) == 1
    # No condition on the victim: the message was at fault, not the CR.
    cr = cluster.kubectl_json("get", "mc", "-n", namespace, VICTIM)
    assert "Forged" not in json.dumps(cr.get("status") or {})


def test_forged_uid_with_matching_headers_writes_only_what_the_api_says(
    cluster: Cluster,
    service_procs: Services,
    namespace: str,
    victim: dict[str, Any],
    ports: dict[str, int],
) -> None:
    """A careful forger keeps body and headers consistent (a new uid and resourceVersion in
    both): nothing in the message contradicts itself, so the reconciler reads the CR from the
    API server before writing and writes from that copy, which matches the live Deployment."""
    key = ObjectKey(namespace, VICTIM)
    headers, body = asyncio.run(_newest_event(cluster, key))
    uid = str(uuid.uuid4())
    body["metadata"]["uid"] = uid
    body["metadata"]["resourceVersion"] = "999999999"
    body["spec"]["image"] = FORGED_IMAGE
    headers["ce-id"] = events.change_id(uid, "999999999", "modified")
    headers["ce-resourceversion"] = "999999999"
    asyncio.run(_forge_event(cluster, key, headers, body))
    wait_for(
        lambda: _distrusted(ports["reconciler"], "reconcile", "stale") >= 1,
        timeout=60,
        what="the reconciler to read the CR from the API server and count the stale event",
    )
    _assert_untouched(cluster, namespace, victim)
    assert _dead_letters(cluster, namespace) == []


def test_replayed_old_event_writes_nothing(
    cluster: Cluster,
    service_procs: Services,
    namespace: str,
    victim: dict[str, Any],
    ports: dict[str, int],
) -> None:
    """The CR's first event (size 1), published again after the user scaled it to 2: the
    reconciler keeps the Deployment at what the API server's CR says."""
    key = ObjectKey(namespace, VICTIM)
    old_headers, old_body = asyncio.run(_newest_event(cluster, key))
    cluster.kubectl(
        "patch", "mc", "-n", namespace, VICTIM, "--type=merge", "-p", '{"spec":{"size":2}}'
    )
    scaled = wait_for(
        lambda: (d := _deployment(cluster, namespace)) and d["spec"]["replicas"] == 2 and d,
        timeout=60,
        what="the Deployment scaled to 2",
    )
    stale_before = _distrusted(ports["reconciler"], "reconcile", "stale")
    asyncio.run(_forge_event(cluster, key, old_headers, old_body))
    wait_for(
        lambda: _distrusted(ports["reconciler"], "reconcile", "stale") > stale_before,
        timeout=60,
        what="the replayed event to be counted as stale",
    )
    _assert_untouched(cluster, namespace, scaled)


def test_forged_outcome_for_another_uid_is_ignored_and_counted(
    cluster: Cluster,
    service_procs: Services,
    namespace: str,
    victim: dict[str, Any],
    ports: dict[str, int],
) -> None:
    service_procs.start("status", "--health-port", str(ports["status"]), name="status")
    cluster.wait_available(namespace, VICTIM)
    key = ObjectKey(namespace, VICTIM)
    outcome = Outcome(
        key=str(key),
        uid=str(uuid.uuid4()),
        generation=1,
        result="error",
        reason="ForgedFailure",
        message="this outcome was forged",
        time=dt.datetime.now(dt.UTC),
    )

    async def forge() -> None:
        nc = await _as_user(cluster, "reconciler")
        try:
            js = nc.jetstream()
            await js.publish(
                subjects.subject(subjects.OUTCOMES, "reconcile", key),
                outcome.to_json(),
                headers={events.MSG_ID: f"forged-{uuid.uuid4()}"},
            )
            await enqueue(js, controller="status", key=key, headers={ORIGIN: "test:forged"})
        finally:
            await nc.close()

    before = cluster.kubectl_json("get", "mc", "-n", namespace, VICTIM)["metadata"][
        "resourceVersion"
    ]
    asyncio.run(forge())
    wait_for(
        lambda: _distrusted(ports["status"], "status", "outcome_uid") >= 1,
        timeout=60,
        what="the status service to count the forged outcome",
    )
    cr = cluster.kubectl_json("get", "mc", "-n", namespace, VICTIM)
    assert cr["metadata"]["resourceVersion"] == before, "the forged outcome caused a status write"
    assert "ForgedFailure" not in json.dumps(cr["status"])
