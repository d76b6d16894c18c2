"""Issue 3 acceptance: the watcher publishes every change once, in order, as CloudEvents."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.kube.client import MEMCACHED, KubeClient
from tests.conftest import Cluster, free_port
from tests.support import Services, metric, read_stream, wait_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def mc(name: str, namespace: str, size: int = 1) -> str:
    return json.dumps(
        {
            "apiVersion": "cache.example.com/v1",
            "kind": "Memcached",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"size": size},
        }
    )


def start_watcher(services: Services, namespace: str, name: str = "watcher") -> int:
    """Start a watcher of ``namespace`` and wait for its first list; its health port."""
    port = free_port()
    services.start("watcher", "--namespaces", namespace, "--health-port", str(port), name=name)
    wait_for(
        lambda: "listed memcacheds" in services.log(name),
        timeout=30,
        what=f"{name} to list Memcacheds",
    )
    return port


def memcached_events(cluster: Cluster, namespace: str) -> list[events.Event]:
    filter_ = subjects.wildcard(subjects.EVENTS, "memcached", namespace)
    msgs = asyncio.run(read_stream(cluster.nats_url, filter_))
    return [events.decode(m.headers, m.data) for m in msgs]


def test_create_update_delete_gives_three_events_in_order(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    start_watcher(service_procs, namespace)
    cluster.kubectl("apply", "-f", "-", input_=mc("one", namespace))
    cluster.kubectl("scale", "-n", namespace, "mc/one", "--replicas=2")
    cluster.kubectl("delete", "-n", namespace, "mc/one")
    got = wait_for(
        lambda: (e := memcached_events(cluster, namespace)) and len(e) >= 3 and e,
        timeout=30,
        what="three events",
    )
    assert [e.change for e in got] == ["added", "modified", "deleted"]
    assert [e.type for e in got] == [
        "io.memcached-operator.memcached.added",
        "io.memcached-operator.memcached.modified",
        "io.memcached-operator.memcached.deleted",
    ]
    assert got[1].data["spec"]["size"] == 2
    assert "managedFields" not in got[0].data["metadata"]
    assert all(e.namespace == namespace and e.name == "one" for e in got)
    assert int(got[0].resource_version) < int(got[1].resource_version)


def test_two_watchers_store_each_change_once(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    ports = [
        start_watcher(service_procs, namespace, "watcher-a"),
        start_watcher(service_procs, namespace, "watcher-b"),
    ]
    names = [f"dup-{i}" for i in range(5)]
    for name in names:
        cluster.kubectl("apply", "-f", "-", input_=mc(name, namespace))
    for name in names:
        cluster.kubectl("scale", "-n", namespace, f"mc/{name}", "--replicas=3")
    for name in names:
        cluster.kubectl("delete", "-n", namespace, f"mc/{name}")
    got = wait_for(
        lambda: (e := memcached_events(cluster, namespace)) and len(e) >= 15 and e,
        timeout=30,
        what="15 events",
    )
    # Each replica has published its copy of all 15 (stored, or dropped as a duplicate): the
    # slower one's copies come too late to change what is counted next.
    for port in ports:
        wait_for(
            lambda p=port: (
                metric(p, "mcop_events_published_total", kind="memcached")
                + metric(p, "mcop_events_duplicates_total", kind="memcached")
                >= 15
            ),
            timeout=30,
            what=f"the watcher on port {port} to publish all 15 changes",
        )
    got = memcached_events(cluster, namespace)
    ids = Counter(e.id for e in got)
    assert len(got) == 15, [(e.name, e.change) for e in got]
    assert max(ids.values()) == 1
    per_object = defaultdict(list)
    for e in got:
        per_object[e.name].append(e.change)
    assert all(changes == ["added", "modified", "deleted"] for changes in per_object.values())


async def _update(kube: KubeClient, namespace: str, name: str, size: int) -> str:
    obj = await kube.request(
        "PATCH",
        MEMCACHED.path(namespace, name),
        body={"spec": {"size": size}},
        content_type="application/merge-patch+json",
        resource="memcacheds",
    )
    return str(obj["metadata"]["resourceVersion"])


async def _burst(
    cluster: Cluster, namespace: str, objects: list[str], rounds: range
) -> dict[str, list[str]]:
    kube = await KubeClient.connect(cluster.kubeconfig)
    rvs: dict[str, list[str]] = defaultdict(list)
    try:
        for r in rounds:
            results = await asyncio.gather(
                *(_update(kube, namespace, name, 1 + r % 50) for name in objects)
            )
            for name, rv in zip(objects, results, strict=True):
                rvs[name].append(rv)
    finally:
        await kube.close()
    return rvs


def test_sigkill_mid_burst_ends_with_latest_state_and_no_gaps_while_undisturbed(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    objects = [f"burst-{i}" for i in range(10)]
    for name in objects:
        cluster.kubectl("apply", "-f", "-", input_=mc(name, namespace))
    start_watcher(service_procs, namespace)

    # Phase 1, undisturbed: 100 updates; every one of them must reach the stream.
    phase1 = asyncio.run(_burst(cluster, namespace, objects, range(10)))

    def stream_rvs() -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for e in memcached_events(cluster, namespace):
            out[e.name].append(e.resource_version)
        return out

    wait_for(
        lambda: all(stream_rvs()[n][-1:] == phase1[n][-1:] for n in objects),
        timeout=60,
        what="the watcher to catch up with phase 1",
    )
    seen = stream_rvs()
    for name in objects:
        missing = set(phase1[name]) - set(seen[name])
        assert not missing, f"{name}: changes skipped while undisturbed: {sorted(missing)}"

    # Phase 2: 100 more updates, the watcher killed with SIGKILL halfway and restarted.
    asyncio.run(_burst(cluster, namespace, objects, range(10, 15)))
    service_procs.kill("watcher")
    asyncio.run(_burst(cluster, namespace, objects, range(15, 18)))
    service_procs.stop("watcher")
    start_watcher(service_procs, namespace, "watcher-2")
    final = asyncio.run(_burst(cluster, namespace, objects, range(18, 20)))
    wait_for(
        lambda: all(stream_rvs()[n][-1:] == final[n][-1:] for n in objects),
        timeout=60,
        what="the stream to end with every object's latest state",
    )
    got = memcached_events(cluster, namespace)
    assert max(Counter(e.id for e in got).values()) == 1, "an event was stored twice"
    for name in objects:
        last = [e for e in got if e.name == name][-1]
        live = cluster.kubectl_json("get", "mc", "-n", namespace, name)
        assert last.resource_version == live["metadata"]["resourceVersion"]
        assert last.data["spec"]["size"] == live["spec"]["size"]


def test_events_decode_with_the_cloudevents_sdk(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    start_watcher(service_procs, namespace)
    cluster.kubectl("apply", "-f", "-", input_=mc("sdk", namespace, size=2))
    filter_ = subjects.wildcard(subjects.EVENTS, "memcached", namespace)
    msgs = wait_for(
        lambda: asyncio.run(read_stream(cluster.nats_url, filter_)),
        timeout=30,
        what="an event",
    )
    # The SDK has no NATS binding; its HTTP binding reads the same ce- headers and encoding.
    event = from_http_event(HTTPMessage(headers=msgs[0].headers, body=msgs[0].data))
    assert event.get_specversion() == "1.0"
    assert event.get_type() == "io.memcached-operator.memcached.added"
    assert event.get_subject() == f"{namespace}/sdk"
    assert event.get_source() == events.SOURCE
    assert event.get_id().endswith(":added")
    assert event.get_time() is not None
    assert event.get_extension("fieldmanager") == "kubectl-client-side-apply"
    data = event.get_data()
    assert isinstance(data, dict) and data["spec"]["size"] == 2
    assert msgs[0].headers["Nats-Msg-Id"] == event.get_id()


def test_audit_names_kubectls_field_manager(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    start_watcher(service_procs, namespace)
    cluster.kubectl(
        "apply", "-n", namespace, "-f", str(REPO / "deploy/samples/memcached-sample.yaml")
    )
    filter_ = subjects.wildcard(subjects.EVENTS, "memcached", namespace)
    wait_for(
        lambda: asyncio.run(read_stream(cluster.nats_url, filter_)), timeout=30, what="an event"
    )
    proc = cluster.audit("-o", "json", "--since", "1m", "--namespace", namespace)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records, proc.stdout
    first = records[0]
    assert first["type"] == "io.memcached-operator.memcached.added"
    assert first["name"] == "memcached-sample" and first["namespace"] == namespace
    assert first["fieldManager"] == "kubectl-client-side-apply"
    assert first["resourceVersion"]
