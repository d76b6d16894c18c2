"""From an observed change to JetStream: one CloudEvent, then the requests it is routed to.

Every change becomes one event on ``mcop.events.<kind>.<ns>.<name>`` with a ``Nats-Msg-Id``
derived from the object's uid, resourceVersion and change type, so JetStream stores it once
however many watcher replicas (or restarts) publish it. After the event, requests go to the
work queues as every controller declared beside its handler (services/reconciler/watches.py,
services/status/watches.py), routed by shared/bus/routing.py: the watcher gets the table from
the package root (memcached_operator.routes) and imports no other service.

A PRODUCER span per change that makes requests carries the trace to the event and the
requests; a change that makes none is published without a span of its own (7 of the 10 per CR
in the bench: a CR's status echoes, pods not yet ready), its event carrying the trace it came
with. An object annotated with ``tracing.k8s.io/traceparent`` continues that trace instead of
starting one: a Memcached whose writer put it there, and a Deployment, which the reconciler
stamps with the trace of its write (so the rollout that write starts stays in the same trace).

Watched objects are written by tenants, so nothing they say is believed unchecked: the owner of
a Deployment or Pod comes from its controller reference (owners.py), names must be Kubernetes
names and subjects stay within bounds (shared/bus/subjects.py), and a message that cannot be
published is dead-lettered so that the next one can be (publisher.py, deadletters.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from memcached_operator.shared.api.pods import pod_ip, pod_ready
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.routing import Change, Router
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.kube.client import JsonObject
from memcached_operator.shared.kube.watchlines import Identity, Oversized
from memcached_operator.shared.runtime import telemetry
from memcached_operator.shared.workqueue.types import ORIGIN
from memcached_operator.watcher.deadletters import INVALID_SUBJECT, WATCH_EVENT_TOO_LARGE
from memcached_operator.watcher.informer import Known
from memcached_operator.watcher.owners import Kind, Owner, believed_owner, find_owner
from memcached_operator.watcher.publisher import Message, Publisher

tracer = trace.get_tracer("memcached-operator.watcher")


def extensions(kind: Kind, obj: Mapping[str, Any], owner: Owner | None = None) -> dict[str, str]:
    """The event's ``ce-owner`` (objects a Memcached owns) and ``ce-ready`` (pods): what the
    status service's pod index needs, readable without the body (``owner``: as
    :func:`find_owner` found it, when the caller has already asked)."""
    if not kind.owned:
        return {}
    if owner is None:
        owner = find_owner(kind.name, obj)
    out = {events.OWNER_ATTR: owner.key.name if owner.key is not None else ""}
    if kind.name == "pod":
        out[events.READY_ATTR] = "true" if pod_ready(obj) else "false"
        ip = pod_ip(obj)
        if ip:
            out[events.IP_ATTR] = ip
    return out


class Emitter:
    """Publishes each change of a watched kind, and the requests ``router`` makes of it."""

    def __init__(
        self, publisher: Publisher, router: Router, *, tracer: trace.Tracer = tracer
    ) -> None:
        self.publisher = publisher
        self.router = router
        self.tracer = tracer

    async def emit(self, kind: Kind, change: str, obj: JsonObject, before: Known | None) -> None:
        meta = obj.get("metadata") or {}
        raw_key = ObjectKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        try:
            key = subjects.object_key(raw_key.namespace, raw_key.name)
            subject = subjects.subject(subjects.EVENTS, kind.name, key)
        except ValueError as err:
            # The API server validates names, so this is not one of its objects' changes.
            headers, body = events.encode(kind=kind.name, change=change, obj=obj)
            await self.publisher.refuse(
                Message("", body, headers, f"{kind.name}.{change}", raw_key),
                INVALID_SUBJECT,
                str(err),
            )
            return
        parent = telemetry.context_from_annotation(obj)
        owner = believed_owner(kind, obj)
        requests = self.router.requests(Change(kind.name, change, key, owner.key, obj))
        if not requests:
            # Nothing in the pipeline consumes this change (a CR's status echo, a pod not yet
            # ready): no span of its own. The event carries the trace it came with, or ids
            # flagged not sampled, so the audit still shows a trace id for it.
            context = parent or telemetry.unsampled_context()
            await self._send(kind, change, obj, owner, subject, key, context)
            return
        with self.tracer.start_as_current_span(
            f"send {subjects.PREFIX}.{subjects.EVENTS}.{kind.name}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                **telemetry.messaging_attributes("send", subject),
                "messaging.message.id": events.change_id(
                    str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""), change
                ),
                # The event and the requests it causes, all with this span's context.
                "messaging.batch.message_count": 1 + len(requests),
                "k8s.object.kind": kind.name,
                "k8s.object.key": str(key),
                "k8s.change": change,
            },
        ):
            trace_headers = await self._send(kind, change, obj, owner, subject, key, None)
            for controller, target in requests:
                await self.publisher.request(
                    controller, target, {**trace_headers, ORIGIN: f"watcher:{kind.name}.{change}"}
                )

    async def oversized(self, kind: Kind, line: Oversized, who: Identity | None) -> None:
        """Dead-letter a change whose watch event was too long to read, with what its first
        bytes say: the record names the object (when they do) and keeps those bytes."""
        change = who.change.lower() if who is not None else "unknown"
        key, subject = ObjectKey("", ""), ""
        headers: dict[str, str] = {}
        if who is not None:
            key = ObjectKey(who.namespace, who.name)
            # identify() takes only names the API server validated: within the subject bounds.
            subject = subjects.subject(subjects.EVENTS, kind.name, key)
            stub = {
                "metadata": {
                    "namespace": who.namespace,
                    "name": who.name,
                    "uid": who.uid,
                    "resourceVersion": who.resource_version,
                }
            }
            headers, _ = events.encode(kind=kind.name, change=change, obj=stub)
        await self.publisher.refuse(
            Message(subject, line.prefix, headers, f"{kind.name}.{change}", key),
            WATCH_EVENT_TOO_LARGE,
            f"the watch event was {line.size} bytes; the watcher reads at most "
            f"{line.limit} (--max-watch-line)",
        )

    async def _send(
        self,
        kind: Kind,
        change: str,
        obj: JsonObject,
        owner: Owner,
        subject: str,
        key: ObjectKey,
        context: Context | None,
    ) -> dict[str, str]:
        """Publish the change's event with trace ``context`` (None: the current span's) in its
        headers; those trace headers, for the requests that follow it."""
        trace_headers: dict[str, str] = {}
        telemetry.inject(trace_headers, context=context)
        headers, body = events.encode(
            kind=kind.name,
            change=change,
            obj=obj,
            extra_headers=trace_headers,
            extensions=extensions(kind, obj, owner),
        )
        await self.publisher.send(Message(subject, body, headers, f"{kind.name}.{change}", key))
        return trace_headers
