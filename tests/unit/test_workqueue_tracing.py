"""The consumer span the queue opens around every handler: the request's trace, the messaging
attributes, the exception recorded; a preparing handler names the parent and links itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.runtime.errors import PermanentError
from memcached_operator.shared.workqueue.controller import (
    RECONCILE_CONTROLLER,
    STATUS_CONTROLLER,
    Controller,
)
from memcached_operator.shared.workqueue.tracing import traced
from memcached_operator.shared.workqueue.types import (
    Handler,
    Prepared,
    PreparingHandler,
    Request,
    Result,
)

pytestmark = pytest.mark.unit

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
OTHER_TRACE, OTHER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def request() -> Request:
    return Request(
        key=ObjectKey("ns", "a"),
        controller="reconcile",
        headers={"traceparent": f"00-{TRACE}-{SPAN}-01", "Mcop-Origin": "test"},
        body=b"",
        delivery=2,
        published_at=datetime(2026, 1, 1, tzinfo=UTC),
        sequence=42,
    )


Spans = tuple[TracerProvider, InMemorySpanExporter]


@pytest.fixture
def spans() -> Spans:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def run(
    handler: Handler | PreparingHandler,
    provider: TracerProvider,
    controller: Controller = RECONCILE_CONTROLLER,
) -> Result:
    return asyncio.run(
        traced(handler, request(), controller=controller, worker="w-1", provider=provider)
    )


def test_a_handler_runs_inside_a_consumer_span_in_the_requests_trace(spans: Spans) -> None:
    provider, exporter = spans
    seen: list[trace.Span] = []

    async def handler(req: Request) -> Result:
        seen.append(trace.get_current_span())
        return Result()

    assert run(handler, provider) == Result()
    [span] = exporter.get_finished_spans()
    assert seen[0].get_span_context().span_id == span.context.span_id
    assert span.name == "process mcop.requests.reconcile"
    assert span.kind == SpanKind.CONSUMER
    assert span.instrumentation_scope.name == "memcached-operator.reconciler"
    assert span.context.trace_id == int(TRACE, 16)
    assert span.parent is not None and span.parent.span_id == int(SPAN, 16)
    assert not span.links
    assert dict(span.attributes or {}) == {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "mcop.requests.reconcile.ns.a",
        "messaging.consumer.group.name": "mcop-reconcile",
        "messaging.message.delivery_count": 2,
        "messaging.nats.stream.sequence": 42,
        "k8s.object.key": "ns/a",
        "worker": "w-1",
    }


def test_an_exception_leaving_the_handler_is_recorded_and_sets_the_status(spans: Spans) -> None:
    provider, exporter = spans

    async def handler(req: Request) -> Result:
        raise PermanentError("InvalidSpec", "size must be positive")

    with pytest.raises(PermanentError):
        run(handler, provider)
    [span] = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "PermanentError: InvalidSpec: size must be positive"
    assert [e.name for e in span.events] == ["exception"]


class Preparing:
    def __init__(self, outcome: Callable[[], Awaitable[Result]] | Result) -> None:
        self.outcome = outcome
        self.in_span: list[bool] = []

    async def prepare(self, req: Request) -> Result | Prepared:
        self.in_span.append(trace.get_current_span().get_span_context().is_valid)
        if isinstance(self.outcome, Result):
            return self.outcome
        other = trace.set_span_in_context(
            NonRecordingSpan(
                SpanContext(int(OTHER_TRACE, 16), int(OTHER_SPAN, 16), True, TraceFlags(1))
            )
        )
        request_context = trace.set_span_in_context(
            NonRecordingSpan(SpanContext(int(TRACE, 16), int(SPAN, 16), True, TraceFlags(1)))
        )
        # Swap the roles: the span joins the other trace and links to the request's.
        return Prepared(run=self.outcome, parent=other, links=(request_context, None))


def test_a_preparing_handler_reads_outside_the_span_and_names_its_parent(spans: Spans) -> None:
    provider, exporter = spans

    async def rest() -> Result:
        trace.get_current_span().set_attribute("status.result", "written")
        return Result()

    handler = Preparing(rest)
    assert run(handler, provider, STATUS_CONTROLLER) == Result()
    assert handler.in_span == [False]
    [span] = exporter.get_finished_spans()
    assert span.name == "process mcop.requests.status"
    assert span.instrumentation_scope.name == "memcached-operator.status"
    assert span.context.trace_id == int(OTHER_TRACE, 16)
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
        (int(TRACE, 16), int(SPAN, 16))
    ]
    assert (span.attributes or {})["status.result"] == "written"


def test_a_preparing_handler_that_is_done_early_makes_no_span(spans: Spans) -> None:
    provider, exporter = spans
    assert run(Preparing(Result(requeue_after=0.5)), provider) == Result(requeue_after=0.5)
    assert exporter.get_finished_spans() == ()
