"""The watcher opens a PRODUCER span only for a change that makes requests (the trace goes on
from it); a change that makes none (a CR's status echo, a pod not yet ready) is published
without a span of its own, half the watcher's spans, and its event still carries a trace: the
one its object's annotation continues, or fresh ids flagged not sampled."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from memcached_operator.shared.bus.routing import For, GenerationChanged, Router
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.watcher.emitter import Emitter
from memcached_operator.watcher.owners import Kind
from memcached_operator.watcher.publisher import Message

pytestmark = pytest.mark.unit

MEMCACHED = Kind("memcached", owned=False)
TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class Recorded:
    """What the emitter hands the publisher: events and requests."""

    def __init__(self) -> None:
        self.events: list[Message] = []
        self.requests: list[tuple[str, ObjectKey, dict[str, str]]] = []

    async def send(self, message: Message) -> None:
        self.events.append(message)

    async def request(self, controller: str, key: ObjectKey, headers: dict[str, str]) -> None:
        self.requests.append((controller, key, headers))


def cr(generation: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "cache",
            "namespace": "team-a",
            "uid": "0b5f0c1e-2d43-4c39-9e31-4f7ad1b0c001",
            "resourceVersion": str(100 + generation),
            "generation": generation,
            "annotations": annotations or {},
        },
        "spec": {"size": 1},
    }


def emit(changes: list[tuple[str, dict[str, Any]]]) -> tuple[Recorded, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    published = Recorded()
    emitter = Emitter(
        cast(Any, published),
        Router([For("reconcile", "memcached", GenerationChanged())]),
        tracer=provider.get_tracer("test"),
    )

    async def run() -> None:
        for change, obj in changes:
            await emitter.emit(MEMCACHED, change, obj, None)

    asyncio.run(run())
    return published, exporter


def traceparent(message: Message) -> list[str]:
    return message.headers["traceparent"].split("-")


def test_only_a_change_that_makes_requests_has_a_span() -> None:
    # Created (a reconcile), then a status write (generation unchanged: nothing to do).
    published, exporter = emit([("added", cr(1)), ("modified", cr(1))])
    assert len(published.events) == 2 and len(published.requests) == 1
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["k8s.change"] == "added"
    # The event and its request carry the span's context.
    added = traceparent(published.events[0])
    assert added[1:3] == [f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"]
    assert published.requests[0][2]["traceparent"] == published.events[0].headers["traceparent"]


def test_a_change_without_requests_carries_the_trace_its_object_continues() -> None:
    annotation = {"tracing.k8s.io/traceparent": f"00-{TRACE}-{SPAN}-01"}
    published, exporter = emit([("added", cr(1)), ("modified", cr(1, annotation))])
    assert len(exporter.get_finished_spans()) == 1
    assert published.events[1].headers["traceparent"] == f"00-{TRACE}-{SPAN}-01"


def test_without_one_it_carries_fresh_ids_flagged_not_sampled() -> None:
    published, _ = emit([("added", cr(1)), ("modified", cr(1)), ("modified", cr(1))])
    first, second = traceparent(published.events[1]), traceparent(published.events[2])
    assert first[3] == "00" and second[3] == "00"
    assert int(first[1], 16) and int(first[2], 16)  # valid ids
    assert first[1] != second[1]  # one trace id per event, as before


def test_with_tracing_disabled_it_carries_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SDK_DISABLED=true: no span of the process has ids, and neither do these events."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    published, _ = emit([("added", cr(1)), ("modified", cr(1))])
    assert "traceparent" not in published.events[1].headers
