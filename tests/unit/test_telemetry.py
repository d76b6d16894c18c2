"""Trace context in NATS headers and object annotations, messaging attributes, resource
attributes, and the JSON log line: the pure parts of shared/runtime/telemetry.py and shared/runtime/logs.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest
from opentelemetry import propagate, trace
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from memcached_operator.shared.runtime import logs, telemetry

pytestmark = pytest.mark.unit

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def span(trace_id: str = TRACE, span_id: str = SPAN) -> NonRecordingSpan:
    return NonRecordingSpan(
        SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(1))
    )


@pytest.fixture
def b3_too() -> Iterator[None]:
    """The propagators OTEL_PROPAGATORS=tracecontext,b3multi would install."""
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), B3MultiFormat()])
    )
    yield
    propagate.set_global_textmap(before)


def test_b3_propagators_are_installed_entry_points() -> None:
    names = {ep.name for ep in entry_points(group="opentelemetry_propagator")}
    assert {"tracecontext", "baggage", "b3", "b3multi"} <= names


def test_w3c_headers_round_trip() -> None:
    headers: dict[str, str] = {}
    telemetry.inject(headers, trace.set_span_in_context(span()))
    assert headers["traceparent"] == f"00-{TRACE}-{SPAN}-01"
    ctx = telemetry.span_context(telemetry.extract(headers))
    assert ctx is not None and f"{ctx.trace_id:032x}" == TRACE and f"{ctx.span_id:016x}" == SPAN


@pytest.mark.usefixtures("b3_too")
def test_b3_only_headers_continue_the_trace_whatever_their_case() -> None:
    for headers in (
        {"X-B3-TraceId": TRACE, "X-B3-SpanId": SPAN, "X-B3-Sampled": "1"},
        {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "1"},
    ):
        ctx = telemetry.span_context(telemetry.extract(headers))
        assert ctx is not None, headers
        assert f"{ctx.trace_id:032x}" == TRACE and f"{ctx.span_id:016x}" == SPAN
        assert ctx.trace_flags.sampled


@pytest.mark.usefixtures("b3_too")
def test_inject_writes_every_configured_format() -> None:
    headers: dict[str, str] = {}
    telemetry.inject(headers, trace.set_span_in_context(span()))
    assert headers["traceparent"] == f"00-{TRACE}-{SPAN}-01"
    assert headers["x-b3-traceid"] == TRACE and headers["x-b3-spanid"] == SPAN


def test_traceparent_is_written_even_when_only_b3_is_configured() -> None:
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(B3MultiFormat())
    try:
        headers: dict[str, str] = {}
        telemetry.inject(headers, trace.set_span_in_context(span()))
    finally:
        propagate.set_global_textmap(before)
    assert headers["x-b3-traceid"] == TRACE
    assert headers["traceparent"] == f"00-{TRACE}-{SPAN}-01"


def test_extract_of_nothing_is_no_trace() -> None:
    assert telemetry.span_context(telemetry.extract(None)) is None
    assert telemetry.span_context(telemetry.extract({"Mcop-Origin": "x"})) is None


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({telemetry.TRACEPARENT_ANNOTATION: f"00-{TRACE}-{SPAN}-01"}, TRACE),
        ({telemetry.TRACEPARENT_ANNOTATION: f" 00-{TRACE}-{SPAN}-01\n"}, TRACE),
        ({telemetry.TRACEPARENT_ANNOTATION: "00-" + "0" * 32 + f"-{SPAN}-01"}, None),
        ({telemetry.TRACEPARENT_ANNOTATION: "not a traceparent"}, None),
        ({telemetry.TRACEPARENT_ANNOTATION: ""}, None),
        ({"other": "x"}, None),
        (None, None),
    ],
)
def test_context_from_annotation(annotations: dict[str, str] | None, expected: str | None) -> None:
    meta: dict[str, object] = {"name": "a"}
    if annotations is not None:
        meta["annotations"] = annotations
    ctx = telemetry.span_context(telemetry.context_from_annotation({"metadata": meta}))
    assert (f"{ctx.trace_id:032x}" if ctx else None) == expected


def test_traceparent_of_a_span_is_what_an_annotation_reads_back() -> None:
    value = telemetry.traceparent(span())
    assert value == f"00-{TRACE}-{SPAN}-01"
    back = telemetry.context_from_annotation(
        {"metadata": {"annotations": {telemetry.TRACEPARENT_ANNOTATION: value}}}
    )
    assert telemetry.span_context(back) == span().get_span_context()
    assert telemetry.traceparent(trace.INVALID_SPAN) == ""


def test_links_skip_invalid_repeated_and_parent_contexts() -> None:
    parent = trace.set_span_in_context(span(span_id="1" * 16))
    other = trace.set_span_in_context(span(span_id="2" * 16))
    links = telemetry.links(other, None, parent, other, telemetry.extract({}), besides=parent)
    assert [f"{link.context.span_id:016x}" for link in links] == ["2" * 16]


def test_messaging_attributes_follow_the_conventions() -> None:
    attrs = telemetry.messaging_attributes("process", "mcop.requests.reconcile.ns.a")
    assert attrs == {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "mcop.requests.reconcile.ns.a",
    }


def test_resource_attributes_name_the_service_and_pod() -> None:
    assert telemetry.resource_attributes("watcher", {}) == {"service.name": "watcher"}
    env = {"POD_NAME": "watcher-7d9f-x", "POD_NAMESPACE": "mcop-system"}
    assert telemetry.resource_attributes("watcher", env) == {
        "service.name": "watcher",
        "k8s.pod.name": "watcher-7d9f-x",
        "k8s.namespace.name": "mcop-system",
    }
    named = telemetry.resource_attributes("watcher", {"OTEL_SERVICE_NAME": "mcop-watcher"})
    assert named["service.name"] == "mcop-watcher"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_enabled_by_an_otlp_endpoint(env: dict[str, str], expected: bool) -> None:
    assert telemetry.enabled(env) is expected


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "memcached_operator.reconciler", logging.INFO, __file__, 1, "applied %s", ("x",), None
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_log_line_carries_trace_span_service_and_key() -> None:
    formatter = logs.JsonFormatter("reconciler")
    with trace.use_span(span(), end_on_exit=False):
        line = json.loads(formatter.format(_record(key="ns/a", delivery=2)))
    assert line["message"] == "applied x"
    assert line["level"] == "info"
    assert line["service"] == "reconciler"
    assert line["trace_id"] == TRACE and line["span_id"] == SPAN
    assert line["key"] == "ns/a" and line["delivery"] == 2
    outside = json.loads(formatter.format(_record()))
    assert "trace_id" not in outside and "span_id" not in outside


def test_log_level_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        monkeypatch.setenv("LOG_LEVEL", "warning")
        logs.setup("status")
        assert root.level == logging.WARNING
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        monkeypatch.setenv("LOG_LEVEL", "DEBUG")
        logs.setup("status")
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize(
    ("sampler", "recording"), [(None, False), ("always_on", True), ("parentbased_always_on", True)]
)
def test_without_an_exporter_spans_are_not_recorded_but_trace_ids_still_flow(
    monkeypatch: pytest.MonkeyPatch, sampler: str | None, recording: bool
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    if sampler is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setattr(telemetry, "_provider", None)
    monkeypatch.setattr(telemetry.trace, "set_tracer_provider", lambda provider: None)
    provider = telemetry.setup("status")
    assert provider is not None
    with provider.get_tracer("test").start_as_current_span("change") as span:
        assert span.is_recording() is recording
        assert telemetry.trace_id_of(span) != ""  # for logs, the audit stream, lastTraceId
        headers: dict[str, str] = {}
        telemetry.inject(headers)
    flags = int(headers["traceparent"].rsplit("-", 1)[1], 16)
    assert bool(flags & 0x01) is recording  # the sampled flag
