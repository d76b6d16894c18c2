"""Issue 15: nothing a watched object says reaches a subject unchecked, and liveness means
progress. Real API server, real nats-server, the watcher (and reconciler) as processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from deploy.local import nats as local_nats
from deploy.local.processes import Supervisor
from memcached_operator.shared.api.contract import LABEL_MANAGED_BY, MANAGED_BY, OWNER_ANNOTATION
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import DEADLETTER_STREAM, REQUESTS_STREAM, ensure_streams
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.workqueue.deadletter import (
    DL_BODY_TRUNCATED,
    DL_CONTROLLER,
    DL_ERROR,
    DL_REASON,
    DL_SUBJECT,
)
from memcached_operator.shared.workqueue.types import ORIGIN
from tests.conftest import Cluster, free_port
from tests.support import Services, StoredMessage, metric, read_stream, wait_for

pytestmark = pytest.mark.integration


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of a GET on a service's health port; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()
    except OSError:
        return 0, ""


def start_watcher(services: Services, namespaces: str, *args: str, **env: str) -> int:
    port = free_port()
    services.start(
        "watcher",
        "--namespaces",
        namespaces,
        "--health-port",
        str(port),
        *args,
        name="watcher",
        **env,
    )
    wait_for(
        lambda: "listed memcacheds" in services.log("watcher"), timeout=60, what="the watcher up"
    )
    return port


def foreign_deployment(cluster: Cluster, namespace: str, name: str, owner_claim: str) -> None:
    """What any tenant can do in its own namespace, with kubectl alone."""
    cluster.kubectl("create", "deployment", name, "--image=pause", "-n", namespace)
    cluster.kubectl(
        "label", f"deployment/{name}", "-n", namespace, f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    )
    cluster.kubectl(
        "annotate", f"deployment/{name}", "-n", namespace, f"{OWNER_ANNOTATION}={owner_claim}"
    )


@pytest.fixture
def second_namespace(cluster: Cluster, namespace: str) -> Iterator[str]:
    name = f"{namespace[:50]}-b"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_a_foreign_deployment_claiming_a_5000_character_owner_blocks_nobody(
    cluster: Cluster, service_procs: Services, namespace: str, second_namespace: str
) -> None:
    port = start_watcher(service_procs, f"{namespace},{second_namespace}")
    service_procs.start("reconciler", name="reconciler")
    wait_for(lambda: "reconciler started" in service_procs.log("reconciler"), timeout=60, what="up")

    # The attack of issue 15, verbatim: before, the owner name became a subject token,
    # nats-server closed the watcher's connection and no Memcached got a Deployment again.
    foreign_deployment(cluster, namespace, "x", "x" * 5000)
    cluster.apply_memcached(second_namespace, "cache", {"size": 1})

    wait_for(
        lambda: (
            cluster.kubectl(
                "get", "deployment", "cache", "-n", second_namespace, check=False
            ).returncode
            == 0
        ),
        timeout=90,
        what="the Deployment of a Memcached applied after the attack",
    )
    # The claim was counted with its reason and logged (bounded) with the object's name.
    wait_for(
        lambda: (
            metric(
                port,
                "mcop_watcher_owner_rejected_total",
                kind="deployment",
                reason="InvalidOwnerName",
            )
            >= 1
        ),
        timeout=30,
        what="the rejected owner claim counted",
    )
    log = service_procs.log("watcher")
    assert f"ignoring the owner deployment '{namespace}'/'x' claims: InvalidOwnerName" in log
    assert "(5000 characters)" in log and "x" * 100 not in log
    assert "maximum control line" not in log
    assert http_get(port, "/healthz")[0] == 200
    # The foreign Deployment's own change is still recorded, without an owner.
    stored = asyncio.run(
        read_stream(
            cluster.nats_url,
            subjects.subject(subjects.EVENTS, "deployment", ObjectKey(namespace, "x")),
        )
    )
    assert stored and stored[-1].headers["ce-owner"] == ""


async def _newest_request(nats_url: str, controller: str, key: ObjectKey) -> dict[str, str] | None:
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        msg = await nc.jetstream().get_last_msg(
            REQUESTS_STREAM, subjects.subject(subjects.REQUESTS, controller, key)
        )
        return dict(msg.headers or {})
    except NotFoundError:
        return None
    finally:
        await nc.close()


def _has_event(cluster: Cluster, kind: str, key: ObjectKey, annotation: str) -> bool:
    stored = asyncio.run(
        read_stream(cluster.nats_url, subjects.subject(subjects.EVENTS, kind, key))
    )
    return any(
        annotation in (events.decode(m.headers, m.data).data["metadata"].get("annotations") or {})
        for m in stored
    )


def test_an_owner_claim_its_controller_reference_does_not_back_asks_for_nothing(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    # No reconciler or status service runs: every request stays in the stream to be read.
    port = start_watcher(service_procs, namespace)
    victim = ObjectKey(namespace, "victim")
    cluster.apply_memcached(namespace, "victim", {"size": 1})
    wait_for(
        lambda: asyncio.run(_newest_request(cluster.nats_url, "reconcile", victim)),
        timeout=30,
        what="the victim's own reconcile request",
    )

    # A Deployment and a bare Pod, labelled managed-by and annotated with the victim's name,
    # owned by nothing.
    foreign_deployment(cluster, namespace, "intruder", "victim")
    cluster.kubectl(
        "run",
        "intruder-pod",
        "--image=pause",
        "-n",
        namespace,
        f"--labels={LABEL_MANAGED_BY}={MANAGED_BY}",
        f"--annotations={OWNER_ANNOTATION}=victim",
    )
    # Markers: once these later changes are in the stream, whatever the watcher published
    # for the earlier ones is too (publishes are confirmed in order per watched kind); the
    # second marker does the same for whatever it sent after the first marker's events.
    for marker in ("test/marker", "test/after"):
        cluster.kubectl("annotate", "deployment/intruder", "-n", namespace, f"{marker}=1")
        cluster.kubectl("annotate", "pod/intruder-pod", "-n", namespace, f"{marker}=1")
        wait_for(
            lambda m=marker: (
                _has_event(cluster, "deployment", ObjectKey(namespace, "intruder"), m)
                and _has_event(cluster, "pod", ObjectKey(namespace, "intruder-pod"), m)
            ),
            timeout=30,
            what=f"the {marker} events",
        )

    reconcile = asyncio.run(_newest_request(cluster.nats_url, "reconcile", victim))
    assert reconcile is not None and reconcile[ORIGIN] == "watcher:memcached.added", reconcile
    assert asyncio.run(_newest_request(cluster.nats_url, "status", victim)) is None
    for kind in ("deployment", "pod"):
        assert (
            metric(port, "mcop_watcher_owner_rejected_total", kind=kind, reason="NoController") >= 1
        )


@dataclass
class OwnNats:
    """A nats-server of the test's own, with a configuration of its own."""

    supervisor: Supervisor
    port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        rec = self.supervisor.get(local_nats.NAME)
        assert rec is not None
        return rec.pid

    def start(self, extra: str = "") -> None:
        """Start it and make the streams, as the admin step does on every cluster."""
        local_nats.start(self.supervisor, port=self.port, monitor_port=free_port(), extra=extra)
        asyncio.run(self._ensure_streams())

    async def _ensure_streams(self) -> None:
        nc = await nats.connect(self.url)
        try:
            await ensure_streams(nc.jetstream())
        finally:
            await nc.close()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[OwnNats]:
    server = OwnNats(Supervisor(tmp_path / "nats"), free_port())
    yield server
    try:
        os.kill(server.pid, signal.SIGCONT)
    except (OSError, AssertionError):
        pass
    server.supervisor.stop(local_nats.NAME)


def test_a_watcher_whose_nats_stops_answering_turns_unhealthy_then_recovers(
    cluster: Cluster, service_procs: Services, namespace: str, own_nats: OwnNats
) -> None:
    own_nats.start()
    port = start_watcher(
        service_procs, namespace, NATS_URL=own_nats.url, LIVENESS_STALL_SECONDS="5"
    )
    assert http_get(port, "/healthz")[0] == 200

    os.kill(own_nats.pid, signal.SIGSTOP)  # connected, but nothing is ever confirmed
    try:
        cluster.apply_memcached(namespace, "waiting", {"size": 1})
        status, body = wait_for(
            lambda: (r := http_get(port, "/healthz"))[0] == 503 and r,
            timeout=60,
            what="/healthz to fail while the change cannot be published",
        )
        assert "[-]progress failed" in body and "no progress for" in body
    finally:
        os.kill(own_nats.pid, signal.SIGCONT)

    wait_for(lambda: http_get(port, "/healthz")[0] == 200, timeout=60, what="/healthz to recover")
    stored = asyncio.run(
        read_stream(own_nats.url, subjects.wildcard(subjects.EVENTS, "memcached", namespace))
    )
    assert [m.headers["ce-name"] for m in stored] == ["waiting"]


def test_a_watcher_whose_connection_the_server_closed_for_good_stops_with_a_failure(
    cluster: Cluster, service_procs: Services, namespace: str, own_nats: OwnNats
) -> None:
    # An operator set a control-line limit below the operator's subject bound: a long but
    # valid name makes nats-server close the connection, and nats-py does not reconnect.
    own_nats.start(extra="max_control_line: 256")
    port = start_watcher(service_procs, namespace, NATS_URL=own_nats.url)
    assert http_get(port, "/healthz")[0] == 200
    cluster.apply_memcached(namespace, "c" * 240, {"size": 1})

    def failed() -> bool:
        log = service_procs.log("watcher")
        rec = service_procs.supervisor.get("watcher")
        stopped = rec is not None and not rec.alive()
        return (stopped and "watcher stopped: the NATS connection was closed for good" in log) or (
            http_get(port, "/healthz")[0] == 503
        )

    wait_for(failed, timeout=60, what="the watcher to stop or turn unhealthy")
    assert "maximum control line exceeded" in service_procs.log("watcher")


def test_a_change_too_large_for_the_server_is_dead_lettered_and_the_next_one_published(
    cluster: Cluster, service_procs: Services, namespace: str, own_nats: OwnNats
) -> None:
    # A server with nats-server's usual max_payload scaled down, so that a tenant's object
    # with a large annotation exceeds it (at 1 MiB, a Deployment whose pod template carries
    # a large environment does the same).
    own_nats.start(extra="max_payload: 65536")
    port = start_watcher(service_procs, namespace, NATS_URL=own_nats.url)
    cluster.kubectl("create", "deployment", "big", "--image=pause", "-n", namespace)
    cluster.kubectl("annotate", "deployment/big", "-n", namespace, f"test/blob={'b' * 100_000}")
    cluster.kubectl("label", "deployment/big", "-n", namespace, f"{LABEL_MANAGED_BY}={MANAGED_BY}")
    # The next change of the same kind: the same informer must get past the large one.
    cluster.kubectl("create", "deployment", "next", "--image=pause", "-n", namespace)
    cluster.kubectl("label", "deployment/next", "-n", namespace, f"{LABEL_MANAGED_BY}={MANAGED_BY}")

    next_key = ObjectKey(namespace, "next")
    wait_for(
        lambda: asyncio.run(
            read_stream(own_nats.url, subjects.subject(subjects.EVENTS, "deployment", next_key))
        ),
        timeout=60,
        what="the event of the Deployment changed after the large one",
    )
    records = wait_for(
        lambda: asyncio.run(
            read_stream(
                own_nats.url,
                subjects.subject(subjects.DEADLETTER, "watcher", ObjectKey(namespace, "big")),
                stream=DEADLETTER_STREAM,
            )
        ),
        timeout=30,
        what="the dead-letter record of the large Deployment's change",
    )
    headers = records[0].headers
    assert headers[DL_REASON] == "MessageTooLarge"
    assert headers[DL_CONTROLLER] == "watcher"
    assert headers[DL_SUBJECT] == subjects.subject(
        subjects.EVENTS, "deployment", ObjectKey(namespace, "big")
    )
    assert headers["ce-name"] == "big" and int(headers[DL_BODY_TRUNCATED]) > 100_000
    assert len(records[0].data) <= 1024
    assert (
        metric(port, "mcop_dead_lettered_total", controller="watcher", reason="MessageTooLarge")
        >= 1
    )
    assert http_get(port, "/healthz")[0] == 200


def _deadletters(nats_url: str, key: ObjectKey) -> list[StoredMessage]:
    return asyncio.run(
        read_stream(
            nats_url,
            subjects.subject(subjects.DEADLETTER, "watcher", key),
            stream=DEADLETTER_STREAM,
        )
    )


def _managed_deployment(cluster: Cluster, namespace: str, name: str, **env: str) -> None:
    """A tenant's Deployment labelled as ours, created in one request with the body as given
    (``kubectl create --raw``: kubectl's own encoding would escape ``<`` six-fold on the way)."""
    container = {
        "name": "c",
        "image": "pause",
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]},
            },
        },
    }
    cluster.kubectl(
        "create",
        "--raw",
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        "-f",
        "-",
        input_=json.dumps(doc),
    )


def _event_stored(nats_url: str, kind: str, key: ObjectKey) -> bool:
    return bool(asyncio.run(read_stream(nats_url, subjects.subject(subjects.EVENTS, kind, key))))


def _await_deployment_event(cluster: Cluster, key: ObjectKey, what: str) -> None:
    wait_for(lambda: _event_stored(cluster.nats_url, "deployment", key), timeout=60, what=what)


def _big_then_next(cluster: Cluster, namespace: str, blob: str) -> None:
    """A Deployment "big" whose environment is ``blob``, then "next", whose event must come."""
    _managed_deployment(cluster, namespace, "big", BLOB=blob)
    _managed_deployment(cluster, namespace, "next")
    _await_deployment_event(cluster, ObjectKey(namespace, "next"), "the next Deployment's event")


def test_an_object_whose_watch_event_outgrows_the_read_buffer_does_not_end_the_watch(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    # A megabyte of "<" is a megabyte in etcd and six in the watch's JSON ("\u003c" each):
    # longer than aiohttp's line buffer (4 MiB), which used to end the watch with LineTooLong
    # and relist every Deployment the watcher sees, at every change of this one.
    port = start_watcher(service_procs, namespace)
    _big_then_next(cluster, namespace, "<" * 1_400_000)
    # The large one was read whole and published (the local server takes 8 MB messages; on
    # one that takes less, it is dead-lettered as MessageTooLarge, as any large change is).
    stored = asyncio.run(
        read_stream(
            cluster.nats_url,
            subjects.subject(subjects.EVENTS, "deployment", ObjectKey(namespace, "big")),
        )
    )
    assert stored, "the large Deployment's event was not published"
    container = events.decode(stored[0].headers, stored[0].data).data["spec"]["template"]["spec"]
    assert container["containers"][0]["env"][0]["value"] == "<" * 1_400_000
    log = service_procs.log("watcher")
    assert "failed unexpectedly" not in log
    assert log.count("listed deployments") == 1, "the Deployment watch was restarted"
    assert http_get(port, "/healthz")[0] == 200


def test_a_watch_event_over_the_watchers_bound_is_dead_lettered_by_name_and_the_next_read(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    port = start_watcher(service_procs, namespace, MAX_WATCH_LINE_BYTES="65536")
    # One published while small, then grown over the bound, then deleted.
    grow = ObjectKey(namespace, "grow")
    _managed_deployment(cluster, namespace, "grow")
    _await_deployment_event(cluster, grow, "the small Deployment's event")
    cluster.kubectl("annotate", "deployment/grow", "-n", namespace, f"test/blob={'b' * 100_000}")
    _big_then_next(cluster, namespace, "b" * 100_000)
    records = wait_for(
        lambda: _deadletters(cluster.nats_url, ObjectKey(namespace, "big")),
        timeout=30,
        what="the oversized watch event dead-lettered",
    )
    headers = records[0].headers
    assert headers[DL_REASON] == "WatchEventTooLarge"
    assert headers[DL_SUBJECT] == subjects.subject(
        subjects.EVENTS, "deployment", ObjectKey(namespace, "big")
    )
    assert headers["ce-name"] == "big" and headers["ce-namespace"] == namespace
    assert "the watch event was 1" in headers[DL_ERROR] and "at most 65536" in headers[DL_ERROR]
    # The record keeps the event's first KiB, which is how the API server began it.
    assert records[0].data.startswith(b'{"type":"ADDED","object":{"kind":"Deployment"')
    assert len(records[0].data) == 1024
    # Not published, not believed from a forged shape: the stream has no event of it.
    assert not _event_stored(cluster.nats_url, "deployment", ObjectKey(namespace, "big"))
    assert (
        metric(port, "mcop_dead_lettered_total", controller="watcher", reason="WatchEventTooLarge")
        >= 1
    )
    # The grown one's modification is dead-lettered too; its deletion still reaches the
    # stream, as a relist reports one (the object's identity, without its body).
    grown = _deadletters(cluster.nats_url, grow)
    assert grown and grown[0].headers["ce-type"].endswith(".modified"), grown
    cluster.kubectl("delete", "deployment", "grow", "-n", namespace)
    newest = wait_for(
        lambda: (
            [
                m
                for m in asyncio.run(
                    read_stream(
                        cluster.nats_url, subjects.subject(subjects.EVENTS, "deployment", grow)
                    )
                )
                if m.headers["ce-type"].endswith(".deleted")
            ]
        ),
        timeout=30,
        what="the grown Deployment's deletion on the stream",
    )
    assert events.decode(newest[-1].headers, newest[-1].data).data["metadata"]["name"] == "grow"
    log = service_procs.log("watcher")
    assert log.count("listed deployments") == 1, "the Deployment watch was restarted"
    assert http_get(port, "/healthz")[0] == 200


def _peak_rss_mb(services: Services, name: str) -> float:
    """The most memory the service's process has held (VmHWM), in MiB."""
    rec = services.supervisor.get(name)
    assert rec is not None
    for line in Path(f"/proc/{rec.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_relist_of_many_large_objects_holds_a_page_at_a_time(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    # A tenant's 30 Deployments of 1.4 MB each, labelled as ours: 42 MB that one list page of
    # 500 objects used to hold at once, with their decoded objects and their queued events
    # besides, at every relist (a watcher's start, a watch expired): enough of them and the
    # watcher ran out of memory at each start, and nobody's changes were published.
    blob = "b" * 1_400_000
    names = [f"big-{i}" for i in range(30)]
    for name in names:
        _managed_deployment(cluster, namespace, name, BLOB=blob)
    empty = f"{namespace}-empty"
    cluster.kubectl("create", "namespace", empty)
    try:
        # The same watcher for a namespace with nothing in it: what a start costs anyway.
        service_procs.start("watcher", "--namespaces", empty, name="baseline")
        wait_for(
            lambda: "listed deployments" in service_procs.log("baseline"),
            timeout=60,
            what="the baseline watcher listed",
        )
        port = start_watcher(service_procs, namespace, MAX_LIST_PAGE_BYTES=str(4 << 20))
        for name in names:
            _await_deployment_event(cluster, ObjectKey(namespace, name), f"{name}'s event")
        grown = _peak_rss_mb(service_procs, "watcher") - _peak_rss_mb(service_procs, "baseline")
        # Pages of two objects (4 MiB), flushes of 4 MiB of events: 29-37 MiB here, where the
        # whole list in one page took 195 (4.6 times the objects' size, growing with them).
        assert grown < 80, f"the relist took {grown:.0f} MiB more than a watcher of nothing"
        assert metric(port, "mcop_kube_list_pages_shrunk_total", resource="deployments") >= 1
        log = service_procs.log("watcher")
        assert "asking for" in log and "failed unexpectedly" not in log
        assert log.count("listed deployments") == 1
    finally:
        cluster.kubectl("delete", "namespace", empty, "--wait=false", check=False)
