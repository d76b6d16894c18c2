"""Issue 7 acceptance: the NATS users of deploy/, enforced by the session's real nats-server.

The local server runs with the users and permissions of deploy/local/nats_auth.py (the same
auth.conf as the Kubernetes manifests). Unauthenticated clients are refused; the audit user
reads the event stream but writes nothing; each service user can publish only its own
subjects; and the services, each connected as its own user, run the whole pipeline, including
the rarer paths of the work queue (requeue, retries up to the dead-letter stream, leases).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.reconciler.reconcile import publish_outcome
from services.status.service import last_outcome
from shared import events, subjects
from shared.outcomes import Outcome
from shared.replay import replay
from shared.streams import DEADLETTER_STREAM, EVENTS_STREAM, ensure_streams
from shared.subjects import ObjectKey
from shared.workqueue import Handler, KeyedWorkQueue, Request, Result, enqueue
from tests.conftest import Cluster
from tests.support import Services, await_for, read_stream, wait_for

pytestmark = pytest.mark.integration

Errors = list[str]


@asynccontextmanager
async def connect_as(cluster: Cluster, user: str) -> AsyncIterator[tuple[Client, Errors]]:
    """A connection as `user`, with the asynchronous errors the server sent it (permission
    violations arrive that way, lower-cased by nats-py)."""
    creds = cluster.layout.nats_credentials(user)
    errors: Errors = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err).lower())

    nc = await nats.connect(
        creds["NATS_URL"],
        user=creds["NATS_USER"],
        password=creds["NATS_PASSWORD"],
        name=f"test-{user}",
        error_cb=on_error,
        allow_reconnect=False,
        connect_timeout=5,
    )
    try:
        yield nc, errors
    finally:
        await nc.close()


@pytest.fixture
async def streams(cluster: Cluster) -> None:
    """The pipeline's streams, as the services would create them (none may have run yet)."""
    async with connect_as(cluster, "admin") as (nc, _):
        await ensure_streams(nc.jetstream())


async def violation(errors: Errors, subject: str, timeout: float = 5.0) -> bool:
    wanted = f'permissions violation for publish to "{subject.lower()}"'
    return bool(
        await await_for(
            lambda: any(wanted in e for e in errors),
            timeout=timeout,
            what=f"a permissions violation for {subject}",
            every=0.05,
        )
    )


async def test_unauthenticated_and_wrong_password_clients_are_refused(cluster: Cluster) -> None:
    address = cluster.layout.nats_credentials("admin")["NATS_URL"]
    for credentials in ({}, {"user": "audit", "password": "not-the-password"}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(address, allow_reconnect=False, connect_timeout=5, **credentials)


def cloud_event(namespace: str, name: str) -> tuple[str, dict[str, str], bytes]:
    obj = {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "1",
        },
        "spec": {"size": 1},
    }
    headers, body = events.encode(kind="memcached", change="added", obj=obj)
    subject = subjects.subject(subjects.EVENTS, "memcached", ObjectKey(namespace, name))
    return subject, headers, body


async def test_audit_user_replays_the_stream_but_cannot_publish(
    cluster: Cluster, namespace: str, streams: None
) -> None:
    subject, headers, body = cloud_event(namespace, "audited")
    admin = await nats.connect(cluster.nats_url, connect_timeout=5)
    try:
        await admin.jetstream().publish(subject, body, headers=headers, timeout=5)
    finally:
        await admin.close()

    # The real audit command, as the audit user, replays it.
    proc = await asyncio.to_thread(cluster.audit, "-o", "json", "-n", namespace, user="audit")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["type"], r["name"]) for r in records] == [
        ("io.memcached-operator.memcached.added", "audited")
    ]

    async with connect_as(cluster, "audit") as (nc, errors):
        js = nc.jetstream()
        replayed = [
            m.subject
            async for m in replay(
                js,
                subjects.wildcard(subjects.EVENTS, "*", namespace),
                stream=EVENTS_STREAM,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            if m is not None
        ]
        assert replayed == [subject]
        # Nothing the audit user sends may change a stream: not events, not the JetStream API.
        forbidden = [
            "mcop.events.x",
            subjects.subject(subjects.REQUESTS, "reconcile", ObjectKey(namespace, "audited")),
            f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{EVENTS_STREAM}.auditor",
            "$KV.mcop-leases.reconcile.x.y",
        ]
        for target in forbidden:
            await nc.publish(target, b"{}")
        await nc.flush(timeout=5)
        for target in forbidden:
            assert await violation(errors, target)
        with pytest.raises(TimeoutError):
            await js.publish("mcop.events.x", b"{}", timeout=1)
    after = await read_stream(cluster.nats_url, subjects.wildcard(subjects.EVENTS, "*", namespace))
    assert [m.subject for m in after] == [subject]


# (user, subject it must not publish to): events belong to the watcher alone, outcomes to the
# reconciler, a controller's acks, leases and dead letters to that controller, stream
# administration to the admin.
DENIED = [
    ("reconciler", "mcop.events.memcached.ns.name"),
    ("reconciler", "mcop.events.deployment.ns.name"),
    ("reconciler", "$KV.mcop-leases.status.ns.name"),
    ("reconciler", "$JS.ACK.MCOP_REQUESTS.mcop-status.1.1.1.1.1.0"),
    ("reconciler", "$JS.API.STREAM.DELETE.MCOP_EVENTS"),
    ("status", "mcop.events.pod.ns.name"),
    ("status", "mcop.outcomes.reconcile.ns.name"),
    ("status", "mcop.requests.reconcile.ns.name"),
    ("status", "mcop.deadletter.reconcile.ns.name"),
    ("status", "$JS.API.STREAM.PURGE.MCOP_EVENTS"),
    ("watcher", "mcop.outcomes.reconcile.ns.name"),
    ("watcher", "mcop.deadletter.reconcile.ns.name"),
    ("watcher", "$KV.mcop-leases.reconcile.ns.name"),
    ("watcher", "$JS.ACK.MCOP_REQUESTS.mcop-reconcile.1.1.1.1.1.0"),
    ("watcher", "$JS.API.CONSUMER.MSG.NEXT.MCOP_REQUESTS.mcop-reconcile"),
    ("watcher", "$JS.API.CONSUMER.DELETE.MCOP_REQUESTS.mcop-reconcile"),
]


@pytest.mark.parametrize(("user", "target"), DENIED)
async def test_service_users_cannot_publish_outside_their_job(
    cluster: Cluster, user: str, target: str
) -> None:
    async with connect_as(cluster, user) as (nc, errors):
        await nc.publish(target, b"{}")
        await nc.flush(timeout=5)
        assert await violation(errors, target)


async def test_reconciler_user_publishes_outcomes_but_not_events(
    cluster: Cluster, namespace: str, streams: None
) -> None:
    key = ObjectKey(namespace, "outcome")
    async with connect_as(cluster, "reconciler") as (nc, errors):
        js = nc.jetstream()
        await publish_outcome(
            js,
            Outcome(
                key=str(key),
                uid=str(uuid.uuid4()),
                generation=1,
                result="success",
                time=dt.datetime.now(dt.UTC),
            ),
        )
        event = subjects.subject(subjects.EVENTS, "memcached", key)
        with pytest.raises(TimeoutError):
            await js.publish(event, b"{}", timeout=1)
        assert await violation(errors, event)
    stored = await read_stream(
        cluster.nats_url, subjects.wildcard(subjects.OUTCOMES, "*", namespace)
    )
    assert [m.subject for m in stored] == [subjects.subject(subjects.OUTCOMES, "reconcile", key)]
    assert not await read_stream(
        cluster.nats_url, subjects.wildcard(subjects.EVENTS, "*", namespace)
    )


def connection_users(cluster: Cluster) -> dict[str, str]:
    """Connection name -> authenticated user, from the server's monitoring endpoint."""
    url = f"http://127.0.0.1:{cluster.layout.nats_monitor_port}/connz?auth=true&limit=4096"
    with urllib.request.urlopen(url, timeout=5) as resp:
        connz = json.load(resp)
    return {c.get("name", ""): c.get("authorized_user", "") for c in connz["connections"]}


def test_services_run_the_pipeline_as_their_own_users(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    procs = {
        "watcher": service_procs.start("watcher", "--namespaces", namespace, name="watcher"),
        "reconciler": service_procs.start("reconciler", name="reconciler"),
        "status": service_procs.start("status", name="status"),
    }
    cluster.apply_memcached(namespace, "own-users", {"size": 1})

    def available() -> bool:
        obj = cluster.kubectl_json("get", "mc", "-n", namespace, "own-users")
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

    wait_for(available, timeout=90, what="the Memcached to become Available")
    users = connection_users(cluster)
    server_log = server_violations(cluster)
    for service, rec in procs.items():
        # A service's connection is named after its worker id, which ends in its pid.
        names = [name for name in users if name.endswith(f"-{rec.pid}")]
        assert names and all(users[n] == service for n in names), (service, users)
        # Some refusals would only slow a service down (a failed lookup is retried), so the
        # server's own log is the witness that none happened.
        refused = [line for line in server_log if f'-{rec.pid}" - ' in line]
        assert not refused, refused
        log = service_procs.log(service).lower()
        assert "permissions violation" not in log, log[-3000:]


def server_violations(cluster: Cluster) -> list[str]:
    """The permission violations nats-server logged (publish or subscribe, any client)."""
    rec = cluster.supervisor.get("nats-server")
    assert rec is not None
    with open(rec.log, errors="replace") as log:
        return [line for line in log if "Violation" in line]


async def run_queue(
    nc: Client,
    *,
    controller: str,
    handler: Handler,
    until: Callable[[], bool],
    dead: list[ObjectKey],
) -> None:
    async def on_dead_letter(request: Request, error: Exception) -> None:
        dead.append(request.key)

    queue = KeyedWorkQueue(
        nc,
        controller=controller,
        max_deliveries=2,
        backoff_base=0.05,
        backoff_cap=0.2,
        on_dead_letter=on_dead_letter,
        depth_interval=0.5,
    )
    await queue.start(handler)
    try:
        await await_for(until, timeout=30, what=f"the {controller} queue to finish")
    finally:
        await queue.stop(timeout=10)


@pytest.mark.parametrize("controller", ["reconcile", "status"])
async def test_work_queue_paths_need_no_more_than_the_service_user(
    cluster: Cluster, namespace: str, controller: str, streams: None
) -> None:
    """Requeue after a delay, retries into the dead-letter stream, a lease held by another
    worker, and (status) reading the newest outcome: all with the service's own user."""
    user = {"reconcile": "reconciler", "status": "status"}[controller]
    runs: dict[str, int] = {}
    dead: list[ObjectKey] = []
    outcome_key = ObjectKey(namespace, "requeued")
    async with (
        connect_as(cluster, "admin") as (admin, _),
        connect_as(cluster, user) as (nc, errors),
        connect_as(cluster, user) as (other, other_errors),
    ):
        admin_js = admin.jetstream()
        await publish_outcome(
            admin_js,
            Outcome(
                key=str(outcome_key),
                uid="u",
                generation=3,
                result="success",
                time=dt.datetime.now(dt.UTC),
            ),
        )
        seen_outcomes: list[int] = []

        async def handler(request: Request) -> Result:
            if request.key.namespace != namespace:
                return Result()  # a leftover request of an earlier test
            runs[request.key.name] = runs.get(request.key.name, 0) + 1
            if request.key.name == "failing":
                raise RuntimeError("always fails")  # a transient error is never dead-lettered
            if request.key.name == "requeued":
                if controller == "status":
                    outcome = await last_outcome(nc.jetstream(), request.key)
                    seen_outcomes.append(outcome.generation if outcome else 0)
                if runs["requeued"] == 1:
                    return Result(requeue_after=0.2)
            if request.key.name == "contended":
                await asyncio.sleep(1.0)
            return Result()

        for name in ("requeued", "failing", "contended"):
            await enqueue(
                admin_js,
                controller=controller,
                key=ObjectKey(namespace, name),
                headers={"Mcop-Origin": "test"},
            )

        def finished() -> bool:
            return runs.get("requeued", 0) >= 2 and bool(dead) and runs.get("contended", 0) >= 2

        async def contend() -> None:
            # While the first run of "contended" holds its lease, a newer request arrives.
            await await_for(lambda: runs.get("contended"), timeout=20, what="a contended run")
            await enqueue(
                admin_js,
                controller=controller,
                key=ObjectKey(namespace, "contended"),
                headers={"Mcop-Origin": "test"},
            )

        await asyncio.gather(
            run_queue(nc, controller=controller, handler=handler, until=finished, dead=dead),
            run_queue(other, controller=controller, handler=handler, until=finished, dead=dead),
            contend(),
        )
        violations = [e for e in errors + other_errors if "permission" in e]
        assert not violations
    # The queue is the controller's real one, shared by the session: requests other tests left
    # behind may pass through it too; only this test's objects are judged here.
    assert [k for k in dead if k.namespace == namespace] == [ObjectKey(namespace, "failing")]
    if controller == "status":
        assert seen_outcomes and set(seen_outcomes) == {3}
    letters = await read_stream(
        cluster.nats_url,
        f"{subjects.PREFIX}.{subjects.DEADLETTER}.{controller}.{namespace}.*",
        stream=DEADLETTER_STREAM,
    )
    assert [m.headers["Mcop-Deadletter-Reason"] for m in letters] == ["MaxDeliveriesExceeded"]


def test_layout_gives_each_service_its_own_credentials(cluster: Cluster) -> None:
    layout = cluster.layout
    seen = set()
    for service in ("watcher", "reconciler", "status", "audit"):
        creds = layout.nats_credentials(service)
        assert creds["NATS_USER"] == service
        assert "@" not in creds["NATS_URL"]
        seen.add(creds["NATS_PASSWORD"])
    assert len(seen) == 4
    assert layout.nats_url.startswith("nats://admin:")
    with pytest.raises(KeyError):
        layout.nats_credentials("nobody")
