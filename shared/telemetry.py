"""OpenTelemetry set-up and trace-context propagation through NATS headers.

Tracing is configured from the standard OTEL_* variables: it exports over OTLP when an endpoint
is set (OTEL_EXPORTER_OTLP_ENDPOINT or ..._TRACES_ENDPOINT) with the protocol from
OTEL_EXPORTER_OTLP_PROTOCOL (grpc by default, or http/protobuf), and stays a no-op otherwise.
Propagators come from OTEL_PROPAGATORS (W3C tracecontext,baggage by default; add b3 or
b3multi for Istio/Envoy), so the same inject/extract calls carry whichever headers are asked
for. The resource carries service.name per service and k8s.pod.name / k8s.namespace.name from
POD_NAME / POD_NAMESPACE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT_ANNOTATION = "tracing.k8s.io/traceparent"
_provider: TracerProvider | None = None


def setup(service: str) -> TracerProvider | None:
    """Install a tracer provider for `service` if OTLP export is configured."""
    global _provider
    if _provider is not None:
        return _provider
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or not endpoint:
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return None
    attrs: dict[str, str] = {"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}
    if os.environ.get("POD_NAME"):
        attrs["k8s.pod.name"] = os.environ["POD_NAME"]
    if os.environ.get("POD_NAMESPACE"):
        attrs["k8s.namespace.name"] = os.environ["POD_NAMESPACE"]
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES.
    provider = TracerProvider(resource=Resource.create(attrs))
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
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
    if _provider is not None:
        _provider.shutdown()


def inject(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write the current (or given) trace context into NATS headers."""
    propagate.inject(headers, context=context)


def extract(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(dict(headers or {}))


def context_from_annotation(obj: Mapping[str, object]) -> Context | None:
    """The trace a CR asks to be continued (KEP-5915's tracing.k8s.io/traceparent)."""
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    value = annotations.get(TRACEPARENT_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(value, str) or not value:
        return None
    # The annotation is W3C whatever OTEL_PROPAGATORS says for the NATS headers.
    ctx = TraceContextTextMapPropagator().extract({"traceparent": value})
    span = trace.get_current_span(ctx)
    return ctx if span.get_span_context().is_valid else None


def trace_id_of(span: Span) -> str:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""
