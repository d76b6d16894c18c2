"""Issues 7 and 16: the NATS users of deploy/, enforced by the session's real nats-server.

The local server runs with the accounts, users and permissions of services/admin/nats_auth.py
(the same auth.conf as the Kubernetes manifests). Unauthenticated clients are refused; every
user's allowed requests, tried one by one against the server, are exactly the generated
permission table (``python -m memcached_operator.admin.nats_auth --markdown``); no user reads another's
replies; the audit user reads the event stream but no escape lets it write or create a
consumer; no service may create or change a stream, and a service whose streams are missing
waits unready until the admin step made them; TLS, when on, is the only way in; and the
services, each connected as its own user, run the whole pipeline, including the rarer paths
of the work queue (requeue, retries up to the dead-letter stream, leases).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import nats.aio.msg
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from deploy.local import nats as local_nats
from deploy.local.layout import Layout, free_base_port
from deploy.local.processes import Supervisor
from memcached_operator.admin import nats_auth, nats_table
from memcached_operator.audit.command import read_events
from memcached_operator.reconciler.reconcile import publish_outcome
from memcached_operator.shared.bus import connection as natsconn
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import (
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    LEASES_STREAM,
    REQUESTS_STREAM,
    ensure_streams,
)
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.queue import KeyedWorkQueue, enqueue
from memcached_operator.shared.workqueue.runner import superseded
from memcached_operator.shared.workqueue.settings import QueueSettings
from memcached_operator.shared.workqueue.types import Handler, Request, Result
from memcached_operator.status.service import last_outcome
from tests.conftest import Cluster, free_port
from tests.support import Services, await_for, read_stream, services, wait_for

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

    tls = natsconn.tls_context(creds.get("NATS_CA"))
    nc = await nats.connect(
        creds["NATS_URL"],
        user=creds["NATS_USER"],
        password=creds["NATS_PASSWORD"],
        name=f"test-{user}",
        error_cb=on_error,
        allow_reconnect=False,
        connect_timeout=5,
        # As shared/bus/connection.py connects: replies on the user's own inbox.
        inbox_prefix=natsconn.inbox_prefix(user),
        **({"tls": tls} if tls else {}),
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
            async for m in read_events(nc, subjects.wildcard(subjects.EVENTS, "*", namespace))
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
    *(
        (user, f"$JS.API.STREAM.{verb}.{stream}")
        for user in ("watcher", "reconciler", "status")
        for verb in ("CREATE", "UPDATE")
        for stream in ("MCOP_EVENTS", "MCOP_REQUESTS", "KV_mcop-leases")
    ),
    ("reconciler", "mcop.events.memcached.ns.name"),
    ("reconciler", "mcop.events.deployment.ns.name"),
    ("reconciler", "$KV.mcop-leases.status.ns.name"),
    ("reconciler", "$JS.ACK.MCOP_REQUESTS.mcop-status.1.1.1.1.1.0"),
    ("reconciler", "$JS.API.STREAM.DELETE.MCOP_EVENTS"),
    ("status", "mcop.events.pod.ns.name"),
    # The status service takes no leases (its writes are conditional on the resourceVersion).
    ("status", "$KV.mcop-leases.status.ns.name"),
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
        settings=QueueSettings(
            max_deliveries=2, backoff_base=0.05, backoff_cap=0.2, depth_interval=0.5
        ),
        on_dead_letter=on_dead_letter,
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
                await asyncio.sleep(1.0)  # the scenario: a run long enough to be contended
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


@pytest.mark.parametrize("controller", ["reconcile", "status"])
async def test_a_waiting_request_asks_the_leader_with_the_service_user(
    cluster: Cluster, namespace: str, controller: str, streams: None
) -> None:
    """A request waiting for its lease whose newer request has already run and been acked
    finds none in a direct get and asks the stream's leader (shared/workqueue/runner.py,
    ``superseded``): the service user may, and learns it was overtaken."""
    user = {"reconcile": "reconciler", "status": "status"}[controller]
    key = ObjectKey(namespace, "overtaken")
    mine = subjects.subject(subjects.REQUESTS, controller, key)
    async with (
        connect_as(cluster, "admin") as (admin, _),
        connect_as(cluster, user) as (nc, errors),
    ):
        admin_js, js = admin.jetstream(), nc.jetstream()

        # The controller's durable consumer, as its queue makes it.
        async def nothing(request: Request) -> Result:
            return Result()

        queue = KeyedWorkQueue(nc, controller=controller)
        await queue.start(nothing)
        await queue.stop(timeout=10)
        psub = await js.pull_subscribe_bind(
            durable=Controller.of(controller).durable, stream=REQUESTS_STREAM
        )

        async def delivered() -> nats.aio.msg.Msg:
            """The next delivery of this test's request (others' leftovers are acked)."""
            while True:
                for msg in await psub.fetch(1, timeout=5):
                    if msg.subject == mine:
                        return msg
                    await msg.ack_sync()

        await enqueue(admin_js, controller=controller, key=key, headers={"Mcop-Origin": "test"})
        waiting = await delivered()
        await enqueue(admin_js, controller=controller, key=key, headers={"Mcop-Origin": "test"})
        newer = await delivered()
        await newer.ack_sync()  # another worker ran it: gone from the stream
        assert await superseded(js, waiting)
        await waiting.ack_sync()
        assert not [e for e in errors if "permission" in e]


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


# -- the permission table ----------------------------------------------------------------------

SENTINEL = "mcop.nats-auth-probe-sentinel"  # denied to every restricted user


@pytest.mark.parametrize("user", [u.name for u in nats_auth.USERS if u.permissions is not None])
async def test_each_user_may_do_exactly_what_the_generated_table_says(
    cluster: Cluster, user: str
) -> None:
    """Every JetStream API verb on every stream and every subject family, tried as ``user``
    against the real server: the allowed ones are exactly the cells of the table that
    ``python -m memcached_operator.admin.nats_auth --markdown`` prints (the admin, unrestricted, is not
    probed: some of its allowed requests would delete the session's streams)."""
    probes = nats_table.probes()
    expected = nats_table.table()
    async with connect_as(cluster, user) as (nc, errors):
        for probe in probes:
            if probe.action == "pub":
                # No reply subject: an allowed API request is not even answered.
                await nc.publish(probe.subject, b"x")
            else:
                await nc.subscribe(probe.subject)
        await nc.publish(SENTINEL, b"x")
        await nc.flush(timeout=5)
        # A connection's violations come back in order: the sentinel's is the last.
        await violation(errors, SENTINEL)
    refused = {
        ("pub" if "for publish to" in e else "sub", e.split('"')[1])
        for e in errors
        if "permissions violation" in e and e.count('"') >= 2
    }
    live: dict[str, list[str]] = {}
    for probe in probes:
        cells = live.setdefault(probe.row, [])
        if (probe.action, probe.subject.lower()) not in refused:
            cells.append(probe.item)
    assert live == {row: cells[user] for row, cells in expected.items()}


def test_table_is_generated_from_the_permissions() -> None:
    table = nats_table.markdown_table()
    assert table.startswith("| request | watcher | reconciler | status | audit | admin |")
    assert "| `STREAM.UPDATE` | — | — | — | — | all |" in table


# -- private replies ---------------------------------------------------------------------------


async def test_a_user_cannot_subscribe_to_another_users_replies(cluster: Cluster) -> None:
    async with (
        connect_as(cluster, "reconciler") as (victim, _),
        connect_as(cluster, "status") as (spy, spy_errors),
    ):
        overheard: list[str] = []

        async def listen(msg: nats.aio.msg.Msg) -> None:
            overheard.append(msg.subject)

        for subject in ("_INBOX_reconciler.>", "_INBOX.>", ">"):
            await spy.subscribe(subject, cb=listen)
        await spy.flush(timeout=5)
        for subject in ("_INBOX_reconciler.>", "_INBOX.>", ">"):
            wanted = f'permissions violation for subscription to "{subject.lower()}"'
            await await_for(
                lambda wanted=wanted: any(wanted in e for e in spy_errors),
                timeout=5,
                what=f"the refusal of {subject}",
            )
        # The victim's replies arrive (on its own inbox), and only to the victim.
        info = await victim.jetstream().stream_info(REQUESTS_STREAM)
        assert info.config.name == REQUESTS_STREAM
        assert victim._resp_sub_prefix is not None
        assert bytes(victim._resp_sub_prefix).startswith(b"_INBOX_reconciler.")
        await spy.flush(timeout=5)
        assert overheard == []


# -- the audit user ----------------------------------------------------------------------------


async def consumer_names(cluster: Cluster, stream: str) -> set[str]:
    async with connect_as(cluster, "admin") as (admin, _):
        return {c.name for c in await admin.jetstream().consumers_info(stream)}


async def test_audit_user_has_no_way_to_write_or_to_create_a_consumer(
    cluster: Cluster, namespace: str
) -> None:
    """The escapes a reader with consumer rights would have, each refused by the real server:
    a push consumer delivering into the lease bucket or the requests stream (the server
    delivers a consumer's messages to whatever subject its creator chose), a stream update
    that would shorten the audit log, plain publishes, and a direct get whose reply subject
    is a stream's (the server publishes the reply there: a copy of a stored event)."""
    lease = f"$KV.mcop-leases.reconcile.{namespace}.victim"
    request = subjects.subject(subjects.REQUESTS, "reconcile", ObjectKey(namespace, "victim"))
    event = subjects.subject(subjects.EVENTS, "memcached", ObjectKey(namespace, "victim"))
    before = await consumer_names(cluster, EVENTS_STREAM)
    async with connect_as(cluster, "admin") as (admin, _):
        events_config = (await admin.jetstream().stream_info(EVENTS_STREAM)).config
        subject, headers, body = cloud_event(namespace, "victim")
        await admin.jetstream().publish(subject, body, headers=headers, timeout=5)

    def push(deliver: str) -> bytes:
        config = {"deliver_subject": deliver, "deliver_policy": "all", "ack_policy": "none"}
        return json.dumps({"stream_name": EVENTS_STREAM, "config": config}).encode()

    async with connect_as(cluster, "audit") as (nc, errors):
        attempts = [
            (f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}", push(lease)),
            (f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.escape", push(request)),
            (f"$JS.API.CONSUMER.DURABLE.CREATE.{EVENTS_STREAM}.escape", push(request)),
            (f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.pull", b'{"config":{}}'),
            (
                f"$JS.API.STREAM.UPDATE.{EVENTS_STREAM}",
                json.dumps({"name": EVENTS_STREAM, "max_age": 1_000_000_000}).encode(),
            ),
            (f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}", b""),
            (event, body),
            (request, b"{}"),
            (lease, b"held"),
        ]
        for target, payload in attempts:
            await nc.publish(target, payload, reply=nc.new_inbox())
        await nc.flush(timeout=5)
        for target, _ in attempts:
            assert await violation(errors, target)
        # The one request it may make, with a reply subject of the requests stream: the
        # server answers across the account boundary on a subject of its own instead.
        direct = f"$JS.API.DIRECT.GET.{EVENTS_STREAM}"
        query = json.dumps({"last_by_subj": subject}).encode()
        await nc.publish(direct, query, reply=request)
        await nc.publish(direct, query, reply=lease)
        await nc.flush(timeout=5)
        # Its own reads still work: it is not just cut off.
        assert [m.subject async for m in read_events(nc, subject)] == [subject]
        with pytest.raises((nats.errors.Error, TimeoutError)):  # no consumer API at all
            await nc.jetstream().subscribe(subject, ordered_consumer=True, stream=EVENTS_STREAM)
    async with connect_as(cluster, "admin") as (admin, _):
        js = admin.jetstream()
        assert (await js.stream_info(EVENTS_STREAM)).config.max_age == events_config.max_age
        for stream, target in ((REQUESTS_STREAM, request), (LEASES_STREAM, lease)):
            with pytest.raises(nats.js.errors.NotFoundError):
                await js.get_last_msg(stream, target)
    # No consumer was added (an ephemeral one of another test may have expired meanwhile).
    assert await consumer_names(cluster, EVENTS_STREAM) <= before
    after = await read_stream(cluster.nats_url, event)
    assert [m.subject for m in after] == [subject]


async def test_audit_shows_the_subjects_key_and_marks_what_headers_claim_otherwise(
    cluster: Cluster, namespace: str
) -> None:
    """A publisher (here: the admin) names another namespace and name in the headers and the
    body than in the subject, the part NATS permissions scope: the audit shows the subject's,
    and flags the record with what it claimed."""
    key = ObjectKey(namespace, "victim1")
    obj = {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {
            "name": "other",
            "namespace": "kube-system",
            "uid": "u",
            "resourceVersion": "9",
        },
        "spec": {"size": 1, "image": "forged.invalid/memcached:1"},
    }
    headers, body = events.encode(kind="memcached", change="modified", obj=obj)
    honest_subject, honest_headers, honest_body = cloud_event(namespace, "honest")
    async with connect_as(cluster, "admin") as (admin, _):
        js = admin.jetstream()
        await js.publish(honest_subject, honest_body, headers=honest_headers, timeout=5)
        await js.publish(subjects.subject(subjects.EVENTS, "memcached", key), body, headers=headers)
    proc = await asyncio.to_thread(cluster.audit, "-o", "json", "-n", namespace, user="audit")
    assert proc.returncode == 0, proc.stderr
    records = {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(records) == {"honest", "victim1"}
    assert records["honest"]["disagrees"] == []
    forged = records["victim1"]
    assert (forged["namespace"], forged["name"]) == (namespace, "victim1")
    assert sorted(forged["disagrees"]) == [
        "ce-name=other",
        "ce-namespace=kube-system",
        "metadata.name=other",
        "metadata.namespace=kube-system",
    ]
    table = await asyncio.to_thread(cluster.audit, "-n", namespace, user="audit")
    (line,) = [ln for ln in table.stdout.splitlines() if f"{namespace}/victim1" in ln]
    assert "DISAGREES: ce-namespace=kube-system" in line
    assert "kube-system/" not in table.stdout


# -- stream administration ---------------------------------------------------------------------


@contextlib.contextmanager
def own_server(state_dir: Path, *, tls: bool) -> Iterator[Layout]:
    """A nats-server of its own (users as deploy/, TLS only if asked) in a layout of its own,
    without streams: for tests that must see the session's server unchanged."""
    layout = Layout(state_dir, base_port=free_base_port())
    layout.save()
    sup = Supervisor(layout.state_dir)
    local_nats.start(
        sup, port=layout.nats_port, monitor_port=layout.nats_monitor_port, auth=True, tls=tls
    )
    try:
        yield layout
    finally:
        sup.stop(local_nats.NAME)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[Layout]:
    with own_server(tmp_path / "own", tls=False) as layout:
        yield layout


@pytest.fixture
def own_tls_nats(tmp_path: Path) -> Iterator[Layout]:
    with own_server(tmp_path / "own-tls", tls=True) as layout:
        yield layout


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


def streams_cli(
    layout: Layout, action: str, user: str = "admin"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memcached_operator.cli", "streams", action],
        env={**os.environ, **layout.nats_credentials(user)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_service_waits_unready_until_the_admin_step_made_its_streams(
    cluster: Cluster, own_nats: Layout, tmp_path: Path
) -> None:
    """The reconciler, on a server without streams, creates none (it may not), stays unready
    saying what is missing and what to run, and becomes ready once `streams ensure` ran; a
    stream shaped otherwise than the code needs keeps it unready the same way."""
    port = free_port()
    env = cluster.env(MCOP_STATE_DIR=str(own_nats.state_dir), NATS_URL=own_nats.nats_url)
    with services(tmp_path / "services", env) as svc:
        svc.start("reconciler", "--health-port", str(port), name="reconciler")
        wait_for(
            lambda: "streams ensure" in svc.log("reconciler"),
            timeout=60,
            what="the reconciler to say what to run",
        )
        log = svc.log("reconciler")
        assert f"stream {REQUESTS_STREAM} does not exist" in log, log[-2000:]
        code, text = readyz(port)
        assert code == 503 and "[-]streams failed" in text, text
        check = streams_cli(own_nats, "check", user="reconciler")
        assert check.returncode == 1 and "does not exist" in check.stdout, check.stdout
        assert "permissions violation" not in log.lower()

        ensured = streams_cli(own_nats, "ensure")
        assert ensured.returncode == 0, ensured.stdout + ensured.stderr
        wait_for(lambda: readyz(port)[0] == 200, timeout=60, what="the reconciler to be ready")

        # Misshaped by hand (a request per object is one per subject): unready again.
        async def misshape() -> None:
            nc = await nats.connect(own_nats.nats_url)
            try:
                js = nc.jetstream()
                config = (await js.stream_info(REQUESTS_STREAM)).config
                config.max_msgs_per_subject = 5
                await js.update_stream(config)
            finally:
                await nc.close()

        asyncio.run(misshape())
        wait_for(lambda: readyz(port)[0] == 503, timeout=30, what="the reconciler to be unready")
        assert streams_cli(own_nats, "ensure").returncode == 0
        wait_for(lambda: readyz(port)[0] == 200, timeout=30, what="the reconciler ready again")
        assert "permissions violation" not in svc.log("reconciler").lower()


# -- TLS ---------------------------------------------------------------------------------------


def plain_connect(port: int) -> tuple[str, str]:
    """A client that speaks NATS without TLS: the server's INFO, then what it answers to
    CONNECT and PING (PONG from a server that took the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        info = conn.recv(4096).decode(errors="replace")
        conn.sendall(b'CONNECT {"verbose":false,"user":"admin","pass":"x"}\r\nPING\r\n')
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(4096):
                answer += chunk
        return info, answer.decode(errors="replace")


async def test_plain_server_answers_a_plain_client(own_nats: Layout) -> None:
    """The contrast for the test below: the same plain client, on a server without TLS."""
    info, answer = await asyncio.to_thread(plain_connect, own_nats.nats_port)
    assert '"tls_required"' not in info
    assert "-ERR 'Authorization Violation'" in answer  # heard, then refused the password


async def test_with_tls_on_only_verified_tls_clients_get_in(own_tls_nats: Layout) -> None:
    own_nats = own_tls_nats
    assert own_nats.nats_tls and own_nats.nats_url.startswith("tls://")
    # The admin step and a service user, over TLS with the CA of NATS_CA (shared/bus/connection.py).
    ensured = await asyncio.to_thread(streams_cli, own_nats, "ensure")
    assert ensured.returncode == 0, ensured.stdout + ensured.stderr
    checked = await asyncio.to_thread(streams_cli, own_nats, "check", "watcher")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Plain NATS is refused before any credentials count.
    info, answer = await asyncio.to_thread(plain_connect, own_nats.nats_port)
    assert '"tls_required":true' in info, info
    assert answer == "", answer  # the server hung up: no PONG, not even an error
    # TLS without the CA: the server's certificate is not trusted.
    creds = own_nats.nats_credentials("admin")
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(
            creds["NATS_URL"],
            user="admin",
            password=creds["NATS_PASSWORD"],
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
        )
