"""The consumer span of a run: the queue traces every handler the same way.

A run is one message (older requests for the object were replaced in the stream), so the
span's parent is the trace context in that message's headers, as the OTel messaging
conventions say for a single-message process span; it carries the messaging attributes, the
object's key and the worker. An exception that leaves the handler is recorded on the span and
sets its status (the SDK does both as it leaves the span). A :class:`PreparingHandler`
reads first and names the span's parent and links itself.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, TracerProvider

from memcached_operator.shared.runtime import telemetry
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.types import (
    Handler,
    PreparingHandler,
    Request,
    Result,
)


@functools.lru_cache(maxsize=16)
def _tracer(name: str, provider: TracerProvider | None) -> trace.Tracer:
    """One tracer per controller (and provider), not one per request: the span is on the
    queue's path for every message. A tracer of the global provider made before the provider
    is set is a proxy that follows it, so caching it is safe."""
    return trace.get_tracer(name, tracer_provider=provider)


@contextmanager
def consumer_span(
    controller: Controller,
    request: Request,
    *,
    worker: str,
    parent: Context | None = None,
    links: Sequence[Context | None] = (),
    provider: TracerProvider | None = None,
) -> Iterator[Span]:
    """The current span while ``request`` is handled (``provider``: the global one if None)."""
    context = telemetry.extract(request.headers) if parent is None else parent
    tracer = _tracer(controller.tracer_name, provider)
    with tracer.start_as_current_span(
        f"process {controller.requests}",
        context=context,
        kind=SpanKind.CONSUMER,
        links=telemetry.links(*links, besides=context),
        attributes={
            **telemetry.messaging_attributes("process", controller.request_subject(request.key)),
            "messaging.consumer.group.name": controller.durable,
            "messaging.message.delivery_count": request.delivery,
            "messaging.nats.stream.sequence": request.sequence,
            "k8s.object.key": str(request.key),
            "worker": worker,
        },
    ) as span:
        yield span


async def traced(
    handler: Handler | PreparingHandler,
    request: Request,
    *,
    controller: Controller,
    worker: str,
    provider: TracerProvider | None = None,
) -> Result:
    """Run ``handler`` on ``request`` inside its consumer span."""
    if isinstance(handler, PreparingHandler):
        prepared = await handler.prepare(request)
        if isinstance(prepared, Result):
            return prepared
        with consumer_span(
            controller,
            request,
            worker=worker,
            parent=prepared.parent,
            links=prepared.links,
            provider=provider,
        ):
            return await prepared.run()
    with consumer_span(controller, request, worker=worker, provider=provider):
        return await handler(request)
