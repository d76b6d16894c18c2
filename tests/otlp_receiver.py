"""A real OTLP/HTTP trace receiver for tests: what the services export, decoded and kept.

It listens on a free loopback port, accepts ``POST /v1/traces`` with an
``ExportTraceServiceRequest`` in protobuf (gzip or not, as the SDK's exporter sends it),
decodes it with opentelemetry-proto and keeps every span with its resource's attributes.
Services point at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=<receiver.endpoint>`` and
``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``. It runs in a thread so that synchronous tests
can poll it while service processes export to it.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from tests.support import wait_for

KINDS = {
    ProtoSpan.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    ProtoSpan.SPAN_KIND_INTERNAL: "INTERNAL",
    ProtoSpan.SPAN_KIND_SERVER: "SERVER",
    ProtoSpan.SPAN_KIND_CLIENT: "CLIENT",
    ProtoSpan.SPAN_KIND_PRODUCER: "PRODUCER",
    ProtoSpan.SPAN_KIND_CONSUMER: "CONSUMER",
}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        out[pair.key] = _value(pair.value)
    return out


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, ids as lower-case hex as in a traceparent."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    links: tuple[Link, ...]
    resource: dict[str, Any]
    status_code: int

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))

    def __repr__(self) -> str:  # short, for assertion messages
        return (
            f"<{self.service}:{self.kind} {self.name!r} trace={self.trace_id[:8]} "
            f"span={self.span_id[:8]} parent={self.parent_span_id[:8] or '-'}>"
        )


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ExportTraceServiceRequest."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        attributes=_attributes(span.attributes),
                        links=tuple(
                            Link(link.trace_id.hex(), link.span_id.hex()) for link in span.links
                        ),
                        resource=resource,
                        status_code=span.status.code,
                    )
                )
    return spans


class OtlpReceiver:
    """Collects spans POSTed to ``<endpoint>/v1/traces``; use :func:`otlp_receiver`."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path.rstrip("/") != "/v1/traces":
                    self.send_error(404)
                    return
                try:
                    spans = decode(body)
                except Exception as err:  # a malformed export is a test failure to see
                    self.send_error(400, str(err))
                    return
                receiver._add(spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self, **extra: str) -> dict[str, str]:
        """OTEL_* variables that make a service export here quickly."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            **extra,
        }

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def spans(self, predicate: Callable[[ReceivedSpan], bool] | None = None) -> list[ReceivedSpan]:
        with self._lock:
            found = list(self._spans)
        return [s for s in found if predicate is None or predicate(s)]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return self.spans(lambda s: s.trace_id == trace_id)

    def wait(
        self, predicate: Callable[[list[ReceivedSpan]], Any], *, timeout: float, what: str
    ) -> Any:
        """Poll until ``predicate(all spans)`` is truthy; return its value."""
        try:
            return wait_for(lambda: predicate(self.spans()), timeout=timeout, what=what, every=0.2)
        except AssertionError as err:
            raise AssertionError(
                f"{err}; {len(self.spans())} spans received: {self.spans()[-40:]}"
            ) from None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
