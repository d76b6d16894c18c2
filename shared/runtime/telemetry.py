"""OpenTelemetry set-up and trace-context propagation through NATS headers.

Tracing is configured from the standard OTEL_* variables: it exports over OTLP when an endpoint
is set (OTEL_EXPORTER_OTLP_ENDPOINT or ..._TRACES_ENDPOINT) with the protocol from
OTEL_EXPORTER_OTLP_PROTOCOL (grpc by default, or http/protobuf); otherwise spans are not
recorded, but trace ids are still made and carried (see :func:`setup`).
Propagators come from OTEL_PROPAGATORS (W3C tracecontext,baggage by default; add b3 or
b3multi for Istio/Envoy), so the same inject/extract calls carry whichever headers are asked
for. The resource carries service.name per service and k8s.pod.name / k8s.namespace.name from
POD_NAME / POD_NAMESPACE. Spans about messages follow the OpenTelemetry messaging conventions
(:func:`messaging_attributes`); a consumer that acts on several messages at once links to the
creation context of each (:func:`links`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Link, Span, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

TRACEPARENT_ANNOTATION = "tracing.k8s.io/traceparent"
MESSAGING_SYSTEM = "nats"
_W3C = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_IDS = RandomIdGenerator()


def resource_attributes(service: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """service.name (OTEL_SERVICE_NAME wins) and the pod's name and namespace."""
    env = os.environ if environ is None else environ
    attrs = {"service.name": env.get("OTEL_SERVICE_NAME") or service}
    if env.get("POD_NAME"):
        attrs["k8s.pod.name"] = env["POD_NAME"]
    if env.get("POD_NAMESPACE"):
        attrs["k8s.namespace.name"] = env["POD_NAMESPACE"]
    return attrs


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for spans to be exported."""
    env = os.environ if environ is None else environ
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or not endpoint:
        return False
    return env.get("OTEL_TRACES_EXPORTER", "otlp") != "none"


def setup(service: str) -> TracerProvider | None:
    """Install a tracer provider for `service`: always (so trace ids exist in logs, the audit
    stream and the CR status even without a collector), exporting over OTLP only when the
    OTEL_* variables ask for it; OTEL_SDK_DISABLED=true turns tracing off altogether."""
    global _provider
    if _provider is not None:
        return _provider
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES; the sampler comes from
    # OTEL_TRACES_SAMPLER and the batch settings from OTEL_BSP_*, both read by the SDK.
    # With nowhere to export to (and no sampler asked for), spans are not recorded: trace and
    # span ids are still made and propagated (flagged not sampled), which is all the logs, the
    # audit stream and status.lastTraceId need, without the cost of building span objects.
    exporting = enabled()
    quiet = not exporting and not os.environ.get("OTEL_TRACES_SAMPLER")
    provider = TracerProvider(
        resource=Resource.create(resource_attributes(service)),
        sampler=ParentBased(ALWAYS_OFF) if quiet else None,  # None: OTEL_TRACES_SAMPLER
    )
    if exporting:
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        )
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            provider.add_span_processor(BatchSpanProcessor(HttpExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            provider.add_span_processor(BatchSpanProcessor(GrpcExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown() -> None:
    """Export what is buffered; called once when the service exits."""
    if _provider is not None:
        _provider.shutdown()


def inject(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write the current (or given) trace context into NATS headers.

    ``traceparent`` is always among them, whatever OTEL_PROPAGATORS says: it is part of the
    event stream's documented format, and ``audit`` reads the trace id from it.
    """
    propagate.inject(headers, context=context)
    if "traceparent" not in headers:
        _W3C.inject(headers, context=context)


def unsampled_context() -> Context:
    """A new trace and span id flagged not sampled, with no span behind them: what a message
    nobody traces further carries, so that its trace id still identifies it (audit). With
    OTEL_SDK_DISABLED=true none (the empty context), as no span of the process has ids."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return Context()
    span = trace.NonRecordingSpan(
        SpanContext(
            trace_id=_IDS.generate_trace_id(),
            span_id=_IDS.generate_span_id(),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
        )
    )
    return trace.set_span_in_context(span)


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context of a message's headers, by the configured propagators.

    NATS header names keep their case, and B3 senders write ``X-B3-TraceId`` as often as
    ``x-b3-traceid``; the propagators look names up in lower case.
    """
    return propagate.extract({k.lower(): v for k, v in (headers or {}).items()})


def span_context(context: Context | None) -> SpanContext | None:
    """The (remote) span a context points at, None when it carries no valid trace."""
    if context is None:
        return None
    ctx = trace.get_current_span(context).get_span_context()
    return ctx if ctx.is_valid else None


def links(*contexts: Context | None, besides: Context | None = None) -> list[Link]:
    """Span links to the creation context of each message a span acts on.

    Invalid contexts, repeats and the span of ``besides`` (the parent, already related) are
    left out.
    """
    skip = span_context(besides)
    seen: set[tuple[int, int]] = set() if skip is None else {(skip.trace_id, skip.span_id)}
    out: list[Link] = []
    for context in contexts:
        ctx = span_context(context)
        if ctx is None or (ctx.trace_id, ctx.span_id) in seen:
            continue
        seen.add((ctx.trace_id, ctx.span_id))
        out.append(Link(ctx))
    return out


def messaging_attributes(operation: str, destination: str) -> dict[str, AttributeValue]:
    """The attributes of a span about NATS messages (OTel messaging conventions).

    ``operation`` is the operation type: create, send, receive, process or settle; NATS has no
    names of its own for them, so the operation name is the same word.
    """
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
    }


def context_from_annotation(obj: Mapping[str, object]) -> Context | None:
    """The trace an object asks to be continued (KEP-5915's tracing.k8s.io/traceparent)."""
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    value = annotations.get(TRACEPARENT_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(value, str) or not value:
        return None
    # The annotation is W3C whatever OTEL_PROPAGATORS says for the NATS headers.
    ctx = _W3C.extract({"traceparent": value.strip()})
    return ctx if span_context(ctx) is not None else None


def traceparent(span: Span | None = None) -> str:
    """The W3C traceparent of `span` (default: the current one); '' when there is no trace."""
    target = span or trace.get_current_span()
    if not target.get_span_context().is_valid:
        return ""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(target))
    return carrier.get("traceparent", "")


def trace_id_of(span: Span) -> str:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""
