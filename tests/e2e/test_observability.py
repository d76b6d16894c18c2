"""Issue 6 acceptance: one trace from the applied CR to the status write, B3 propagation,
metrics that move, JSON logs with the trace, and readiness that follows NATS.

The services run as processes exporting over real OTLP/HTTP to a receiver in this process
(tests/otlp_receiver.py), which decodes the protobuf with opentelemetry-proto.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.local import nats as local_nats
from memcached_operator.shared.bus import subjects
from tests.conftest import Cluster, free_port
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support import Services, http_status, wait_for, wait_requests_handled

pytestmark = pytest.mark.e2e

POD_NAMESPACE = "mcop-system"
SERVICES = ("watcher", "reconciler", "status")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as r:
        yield r


def memcached(name: str, namespace: str, *, annotations: dict[str, str] | None = None) -> str:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    body = {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": meta,
        "spec": {"size": 1},
    }
    return json.dumps(body)


def start_pipeline(
    services: Services,
    namespace: str,
    *,
    env: dict[str, str] | None = None,
    per_service: dict[str, dict[str, str]] | None = None,
) -> dict[str, int]:
    """watcher, reconciler and status, each with its own health port; returns the ports."""
    ports: dict[str, int] = {}
    for service in SERVICES:
        port = free_port()
        args = ["--namespaces", namespace] if service == "watcher" else []
        extra = {**(env or {}), **(per_service or {}).get(service, {})}
        services.start(
            service,
            *args,
            "--health-port",
            str(port),
            name=service,
            POD_NAME=f"{service}-0",
            POD_NAMESPACE=POD_NAMESPACE,
            **extra,
        )
        ports[service] = port
    for service, port in ports.items():
        wait_for(lambda p=port: http_status(p, "/healthz") == 200, timeout=30, what=f"{service} up")
    return ports


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The sum of the samples of `metric` whose labels include `labels`; None if there are none."""
    found = [
        v for (n, lbls), v in samples.items() if n == metric and set(labels.items()) <= set(lbls)
    ]
    return sum(found) if found else None


def publish_request(
    cluster: Cluster, controller: str, key: subjects.ObjectKey, headers: dict[str, str]
) -> None:
    async def go() -> None:
        # The session URL carries the admin user when the server has users.
        nc = await nats.connect(cluster.nats_url, connect_timeout=5)
        try:
            await nc.jetstream().publish(
                subjects.subject(subjects.REQUESTS, controller, key), b"", headers=headers
            )
        finally:
            await nc.close()

    asyncio.run(go())


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_span_id == parent.span_id]


def related(span: ReceivedSpan, to: ReceivedSpan) -> bool:
    """`span` is a child of `to` or links to it."""
    return span.parent_span_id == to.span_id or any(
        link.span_id == to.span_id and link.trace_id == to.trace_id for link in span.links
    )


def assert_messaging(span: ReceivedSpan, operation: str) -> None:
    attrs = span.attributes
    assert attrs.get("messaging.system") == "nats", span.attributes
    assert attrs.get("messaging.operation.type") == operation, span.attributes
    assert attrs.get("messaging.operation.name"), span.attributes
    assert str(attrs.get("messaging.destination.name", "")).startswith("mcop."), span.attributes


def test_annotated_cr_is_one_trace_from_watch_event_to_status_write(
    cluster: Cluster, service_procs: Services, namespace: str, receiver: OtlpReceiver
) -> None:
    trace_id, parent_span = secrets.token_hex(16), secrets.token_hex(8)
    start_pipeline(
        service_procs,
        namespace,
        env=receiver.env(),
        per_service={"reconciler": {"LOG_LEVEL": "DEBUG"}, "status": {"LOG_LEVEL": "WARNING"}},
    )
    annotation = {"tracing.k8s.io/traceparent": f"00-{trace_id}-{parent_span}-01"}
    cluster.kubectl(
        "apply", "-f", "-", input_=memcached("traced", namespace, annotations=annotation)
    )

    # The trace id shown on the CR is the caller's.
    wait_for(
        lambda: (
            cluster.get_mc(namespace, "traced").get("status", {}).get("lastTraceId") == trace_id
        ),
        timeout=60,
        what="status.lastTraceId to be the annotation's trace id",
    )

    def complete(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
        # Each service exports its spans when they end, in batches of its own: wait for the
        # ones asserted below, not only for a span of every service (the reconcile's own span
        # ends, and is exported, after its Deployment write and outcome publish).
        mine = [s for s in spans if s.trace_id == trace_id]
        names = {(s.service, s.name) for s in mine}
        needed = {
            ("watcher", "send mcop.events.memcached"),
            ("reconciler", "process mcop.requests.reconcile"),
            ("reconciler", "send mcop.outcomes.reconcile"),
            ("status", "PATCH memcacheds/status"),
        }
        return mine if needed <= names else None

    spans = receiver.wait(complete, timeout=30, what="spans of all three services in the trace")

    # Watcher: the PRODUCER span of the change, a child of the annotation's span.
    [send] = [
        s
        for s in spans
        if s.service == "watcher"
        and s.name == "send mcop.events.memcached"
        and s.attributes.get("k8s.change") == "added"
    ]
    assert send.kind == "PRODUCER"
    assert send.parent_span_id == parent_span
    assert_messaging(send, "send")
    assert send.attributes["messaging.destination.name"] == subjects.subject(
        subjects.EVENTS, "memcached", subjects.ObjectKey(namespace, "traced")
    )

    # Reconciler: the CONSUMER process span of that request, with the Deployment write and
    # the outcome publish inside it.
    processes = [
        s for s in spans if s.service == "reconciler" and s.kind == "CONSUMER" and related(s, send)
    ]
    assert processes, f"no reconcile process span under the watcher's send: {spans}"
    process = processes[0]
    assert process.name == "process mcop.requests.reconcile"
    assert_messaging(process, "process")
    assert process.attributes["messaging.consumer.group.name"] == "mcop-reconcile"
    [deployment_write] = [s for s in children(spans, process) if s.name == "PATCH deployments"]
    assert deployment_write.kind == "CLIENT"
    assert deployment_write.attributes["http.response.status_code"] in (200, 201)
    [outcome_send] = [
        s for s in children(spans, process) if s.service == "reconciler" and s.kind == "PRODUCER"
    ]
    assert outcome_send.name == "send mcop.outcomes.reconcile"
    assert_messaging(outcome_send, "send")
    assert outcome_send.attributes["reconcile.result"] == "success"

    # The Deployment carries the write's trace, so its rollout continues the same trace.
    deployment = cluster.kubectl_json("get", "deployment", "-n", namespace, "traced")
    stamped = deployment["metadata"]["annotations"]["tracing.k8s.io/traceparent"]
    assert stamped.split("-")[1] == trace_id
    receiver.wait(
        lambda all_: any(
            s.trace_id == trace_id
            and s.service == "watcher"
            and s.name == "send mcop.events.deployment"
            for s in all_
        ),
        timeout=20,
        what="the watcher's Deployment event in the same trace",
    )

    # Status: a CONSUMER process span related to an outcome publish, with the status PATCH.
    def status_writes(all_: list[ReceivedSpan]) -> list[tuple[ReceivedSpan, ReceivedSpan]]:
        traced = [s for s in all_ if s.trace_id == trace_id]
        outcome_sends = [s for s in traced if s.name == "send mcop.outcomes.reconcile"]
        status_processes = [
            s
            for s in traced
            if s.service == "status"
            and s.kind == "CONSUMER"
            and any(related(s, o) for o in outcome_sends)
        ]
        return [
            (p, w)
            for p in status_processes
            for w in children(traced, p)
            if w.name == "PATCH memcacheds/status"
        ]

    writes = receiver.wait(
        status_writes,
        timeout=20,
        what="a status write inside the trace of the outcome it reports (a status process "
        "span related to the outcome publish, with the PATCH in it)",
    )
    status_process, status_write = writes[0]
    assert status_write.kind == "CLIENT"
    assert_messaging(status_process, "process")
    assert status_process.name == "process mcop.requests.status"

    # Resource attributes of every span of the trace.
    for span in receiver.trace(trace_id):
        assert span.service in SERVICES, span.resource
        assert span.resource.get("k8s.pod.name") == f"{span.service}-0", span.resource
        assert span.resource.get("k8s.namespace.name") == POD_NAMESPACE, span.resource

    # `audit` shows the trace id for the CR's events and outcomes.
    audit = cluster.audit("-n", namespace, "--name", "traced", "-o", "json")
    assert audit.returncode == 0, audit.stderr
    records = [json.loads(line) for line in audit.stdout.splitlines() if line.strip()]
    added = [r for r in records if r["type"] == "io.memcached-operator.memcached.added"]
    assert [r["traceId"] for r in added] == [trace_id], records
    outcomes = [r for r in records if r["type"] == "io.memcached-operator.reconcile.outcome"]
    assert outcomes and outcomes[0]["traceId"] == trace_id, records
    listing = cluster.audit("-n", namespace, "--name", "traced")
    assert listing.returncode == 0, listing.stderr
    table = listing.stdout
    assert any("memcached.added" in line and trace_id in line for line in table.splitlines()), table

    # Logs: JSON lines with the trace, the span, the service and the object's key; the level
    # from LOG_LEVEL (DEBUG on the reconciler, WARNING on the status service).
    lines = [
        json.loads(line)
        for line in service_procs.log("reconciler").splitlines()
        if line.startswith("{")
    ]
    applied = [
        line
        for line in lines
        if line["message"] == "applied deployment" and line.get("key") == f"{namespace}/traced"
    ]
    assert applied, lines[-20:]
    assert applied[0]["trace_id"] == trace_id
    assert applied[0]["span_id"] == process.span_id
    assert applied[0]["service"] == "reconciler"
    assert applied[0]["level"] == "info"
    assert any(line["level"] == "debug" and line["message"] == "reconciled" for line in lines)
    status_lines = [
        json.loads(line)
        for line in service_procs.log("status").splitlines()
        if line.startswith("{")
    ]
    assert all(line["level"] in ("warning", "error", "critical") for line in status_lines), (
        status_lines
    )


def test_b3_headers_continue_the_callers_trace(
    cluster: Cluster, service_procs: Services, namespace: str, receiver: OtlpReceiver
) -> None:
    ports = start_pipeline(
        service_procs,
        namespace,
        env=receiver.env(OTEL_PROPAGATORS="tracecontext,baggage,b3multi"),
    )
    cluster.kubectl("apply", "-f", "-", input_=memcached("b3", namespace))
    cluster.wait_available(namespace, "b3", timeout=60)
    assert cluster.get_mc(namespace, "b3")["status"].get("lastTraceId")
    # Each status write is a change the watcher reports, in a new trace: the new trace id
    # alone must not cause another write, or the status would be rewritten for ever.
    wait_requests_handled(cluster.nats_url, namespace)
    settled = value(scrape(ports["status"]), "mcop_status_writes_total", result="written")
    # The scenario itself: a while without any change, in which no write may happen.
    time.sleep(5)
    later = value(scrape(ports["status"]), "mcop_status_writes_total", result="written")
    assert later == settled, f"{later} status writes after {settled}, without a change"

    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    # What an Envoy sidecar would send: B3 only, no traceparent.
    publish_request(
        cluster,
        "reconcile",
        subjects.ObjectKey(namespace, "b3"),
        {
            "X-B3-TraceId": trace_id,
            "X-B3-SpanId": span_id,
            "X-B3-Sampled": "1",
            "Mcop-Origin": "test:b3",
        },
    )
    [process] = receiver.wait(
        lambda spans: [
            s
            for s in spans
            if s.trace_id == trace_id and s.service == "reconciler" and s.kind == "CONSUMER"
        ],
        timeout=30,
        what="the reconciler's process span in the B3 trace",
    )
    assert process.parent_span_id == span_id
    # The trace goes on through the outcome publish to the status service.
    receiver.wait(
        lambda spans: (
            any(
                s.trace_id == trace_id and s.service == "reconciler" and s.kind == "PRODUCER"
                for s in spans
            )
            and any(
                s.trace_id == trace_id and s.service == "status" and s.kind == "CONSUMER"
                for s in spans
            )
        ),
        timeout=30,
        what="the outcome publish and the status service's span in the B3 trace",
    )


def test_metrics_of_every_service_move_during_a_run(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    ports = start_pipeline(service_procs, namespace)
    # A second watcher replica: what it publishes after the first is dropped as a duplicate.
    second = free_port()
    service_procs.start(
        "watcher", "--namespaces", namespace, "--health-port", str(second), name="watcher-b"
    )
    wait_for(lambda: http_status(second, "/healthz") == 200, timeout=30, what="watcher-b up")

    # Before any change, controller-runtime's series already exist (at 0).
    names = {
        "reconciler": "reconcile",
        "status": "status",
    }
    before: dict[str, Samples] = {}
    for service, controller in names.items():
        samples = wait_for(
            lambda p=ports[service], c=controller: (
                (s := scrape(p)) and value(s, "workqueue_depth", name=c) is not None and s
            ),
            timeout=30,
            what=f"{service} metrics",
        )
        for metric, labels in (
            ("controller_runtime_reconcile_total", {"result": "success"}),
            ("controller_runtime_reconcile_total", {"result": "error"}),
            ("controller_runtime_reconcile_errors_total", {}),
            ("controller_runtime_active_workers", {}),
            ("controller_runtime_reconcile_time_seconds_count", {}),
            ("workqueue_adds_total", {}),
            ("workqueue_queue_duration_seconds_count", {}),
            ("workqueue_retries_total", {}),
        ):
            key = "name" if metric.startswith("workqueue") else "controller"
            assert value(samples, metric, **{key: controller}, **labels) is not None, (
                service,
                metric,
            )
        before[service] = samples
    for result in ("written", "skipped"):
        assert value(before["status"], "mcop_status_writes_total", result=result) is not None

    cluster.kubectl("apply", "-f", "-", input_=memcached("measured", namespace))
    # A request without the required Mcop-Origin header is dead-lettered at once.
    publish_request(cluster, "reconcile", subjects.ObjectKey(namespace, "poison"), {"X-Any": "1"})
    wait_for(
        lambda: cluster.get_mc(namespace, "measured").get("status", {}).get("observedGeneration"),
        timeout=60,
        what="the CR's status to be written",
    )

    def moved() -> bool:
        rec, st = scrape(ports["reconciler"]), scrape(ports["status"])
        watchers = [scrape(ports["watcher"]), scrape(second)]
        checks = {
            "reconcile success": (
                value(
                    rec,
                    "controller_runtime_reconcile_total",
                    controller="reconcile",
                    result="success",
                )
                or 0
            )
            > (
                value(
                    before["reconciler"],
                    "controller_runtime_reconcile_total",
                    controller="reconcile",
                    result="success",
                )
                or 0
            ),
            "reconcile time": (
                value(
                    rec, "controller_runtime_reconcile_time_seconds_count", controller="reconcile"
                )
                or 0
            )
            > 0,
            "queue duration": (
                value(rec, "workqueue_queue_duration_seconds_count", name="reconcile") or 0
            )
            > 0,
            "outcome adds": (value(rec, "workqueue_adds_total", name="status") or 0) > 0,
            "dead letter": (
                value(
                    rec, "mcop_dead_lettered_total", controller="reconcile", reason="MissingHeader"
                )
                or 0
            )
            >= 1,
            "status success": (
                value(
                    st, "controller_runtime_reconcile_total", controller="status", result="success"
                )
                or 0
            )
            > 0,
            "status written": (value(st, "mcop_status_writes_total", result="written") or 0) > 0,
            # Ready pods come from the index of the stream's pod events, not a LIST per refresh.
            "pods from the index": (value(st, "mcop_pod_reads_total", source="index") or 0) > 0
            and value(st, "mcop_pod_reads_total", source="list") == 0,
            "events published": sum(
                value(w, "mcop_events_published_total", kind="memcached") or 0 for w in watchers
            )
            > 0,
            "duplicates": sum(value(w, "mcop_events_duplicates_total") or 0 for w in watchers) > 0,
            "watcher adds": all(
                (value(w, "workqueue_adds_total", name="reconcile") or 0) > 0 for w in watchers
            ),
            "api requests": (
                value(rec, "mcop_kube_api_requests_total", verb="PATCH", resource="deployments")
                or 0
            )
            > 0,
        }
        missing = [name for name, ok in checks.items() if not ok]
        moved.missing = missing  # type: ignore[attr-defined]
        return not missing

    try:
        wait_for(moved, timeout=30, what="the metrics to move")
    except AssertionError as err:
        raise AssertionError(f"{err}; not moved: {moved.missing}") from None  # type: ignore[attr-defined]


def test_readyz_follows_nats_and_the_services_survive_its_restart(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    ports = start_pipeline(service_procs, namespace)
    for service, port in ports.items():
        wait_for(
            lambda p=port: http_status(p, "/readyz") == 200, timeout=30, what=f"{service} ready"
        )

    stopped = False
    try:
        cluster.supervisor.stop(local_nats.NAME)
        stopped = True
        for service, port in ports.items():
            wait_for(
                lambda p=port: http_status(p, "/readyz") == 503,
                timeout=30,
                what=f"{service} not ready without NATS",
            )
            assert http_status(port, "/healthz") == 200, f"{service} is not alive"
        for service in SERVICES:
            assert service_procs.supervisor.running(service) is not None, f"{service} exited"
    finally:
        if stopped:
            local_nats.start(
                cluster.supervisor,
                port=cluster.layout.nats_port,
                monitor_port=cluster.layout.nats_monitor_port,
            )

    for service, port in ports.items():
        wait_for(
            lambda p=port: http_status(p, "/readyz") == 200,
            timeout=60,
            what=f"{service} ready again after NATS returned",
        )
    for service in SERVICES:
        assert service_procs.supervisor.running(service) is not None, f"{service} exited"
    cluster.kubectl("apply", "-f", "-", input_=memcached("after-restart", namespace))
    wait_for(
        lambda: (
            (mc := cluster.get_mc(namespace, "after-restart"))
            .get("status", {})
            .get("observedGeneration")
            == mc["metadata"]["generation"]
        ),
        timeout=90,
        what="a CR created after the restart to converge",
    )
    assert cluster.kubectl_json("get", "deployment", "-n", namespace, "after-restart")
