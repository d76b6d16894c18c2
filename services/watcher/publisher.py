"""From an observed change to JetStream: one CloudEvent, then the reconcile/status requests.

Every change becomes one event on ``mcop.events.<kind>.<ns>.<name>`` with a ``Nats-Msg-Id``
derived from the object's uid, resourceVersion and change type, so JetStream stores it once
however many watcher replicas (or restarts) publish it. Publishes are pipelined (publish_async)
and confirmed in order before the informer moves on, which keeps ~thousands of changes per
second without giving up ordering per object. After the event, requests go to the work queue:

- a Memcached change asks the reconciler to converge that CR;
- a Deployment change asks the status service to refresh its owner's status (unless nothing
  the status is folded from changed, as when the Deployment controller annotates it), and the
  reconciler too when it was created, deleted or its spec (generation) changed by anyone but
  the reconciler itself (drift);
- a Pod change asks the status service only (ready pods are status, not desired state), and
  only when the owner's Deployment has already counted the ready pods; while its
  readyReplicas differs from the ready pods seen, the Deployment controller's own update is
  still to come, and that update's request brings the pods and the counts in one refresh.

A PRODUCER span per change carries the trace to all three messages. An object annotated with
``tracing.k8s.io/traceparent`` continues that trace instead of starting one: a Memcached whose
writer put it there, and a Deployment, which the reconciler stamps with the trace of its write
(so the rollout that write starts stays in the same trace). Requests published here count as
workqueue adds, as those of :func:`shared.workqueue.enqueue` do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from services.reconciler.desired import FIELD_MANAGER, OWNER_ANNOTATION
from services.status.conditions import deployment_inputs
from services.watcher.informer import Known
from shared import events, metrics, subjects, telemetry
from shared.errors import TransientError
from shared.kube import JsonObject
from shared.pods import pod_ready
from shared.replay import replay
from shared.streams import EVENTS_STREAM
from shared.subjects import ObjectKey
from shared.workqueue import ORIGIN

log = logging.getLogger("memcached_operator.watcher")
tracer = trace.get_tracer("memcached-operator.watcher")

EVENTS_PUBLISHED = Counter(
    "mcop_events_published_total",
    "Change events stored in the stream (duplicates not included)",
    ["kind", "change"],
)
DUPLICATES_DROPPED = Counter(
    "mcop_events_duplicates_total",
    "Change events the stream already held (another replica or a restart published them)",
    ["kind"],
)
REQUESTS_PUBLISHED = Counter(
    "mcop_requests_published_total", "Requests sent to the work queues", ["controller"]
)

RECONCILE = "reconcile"
STATUS = "status"
ACK_TIMEOUT = 5.0


@dataclass(frozen=True)
class Kind:
    """A watched kind and how its changes map to requests."""

    name: str  # subject token and event type segment: memcached, deployment, pod
    owned: bool  # True: requests go to the owning Memcached


def owner_key(obj: Mapping[str, Any]) -> ObjectKey | None:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    name = (meta.get("annotations") or {}).get(OWNER_ANNOTATION)
    if not name:
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == "Memcached" and ref.get("controller"):
                name = ref.get("name")
    return ObjectKey(namespace, str(name)) if name else None


def extensions(kind: Kind, obj: Mapping[str, Any]) -> dict[str, str]:
    """The event's ``ce-owner`` (objects a Memcached owns) and ``ce-ready`` (pods): what the
    status service's pod index needs, readable without the body."""
    if not kind.owned:
        return {}
    owner = owner_key(obj)
    out = {events.OWNER_ATTR: owner.name if owner is not None else ""}
    if kind.name == "pod":
        out[events.READY_ATTR] = "true" if pod_ready(obj) else "false"
    return out


def _generation(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


class Publisher:
    """Publishes events and requests for one watcher process."""

    def __init__(self, js: JetStreamContext, *, batch: int = 256) -> None:
        self.js = js
        self.batch = batch
        self._pending: list[tuple[str, bytes, dict[str, str], asyncio.Future[Any], str]] = []
        self._generations: dict[tuple[str, ObjectKey], int] = {}
        self._ready: dict[ObjectKey, bool] = {}
        # Per owning CR: ready pods seen, and the readyReplicas its Deployment last reported.
        self._ready_pods: dict[ObjectKey, int] = {}
        self._counted: dict[ObjectKey, int] = {}
        self._status_inputs: dict[ObjectKey, int] = {}
        self._flushing = asyncio.Lock()

    async def _send(self, subject: str, body: bytes, headers: dict[str, str], event: str) -> None:
        try:
            future = await self.js.publish_async(subject, body, headers=headers)
        except Exception as err:
            # Disconnected, or the client's buffer is full: settle what is pending first so
            # the order per object holds, then publish this one synchronously.
            log.warning("pipelined publish to %s refused (%s); publishing in order", subject, err)
            await self.flush()
            await self._publish_until_stored(subject, body, headers, event)
            return
        self._pending.append((subject, body, headers, future, event))
        if len(self._pending) >= self.batch:
            await self.flush()

    async def run_flusher(self, interval: float = 0.02) -> None:
        """Confirm pipelined publishes every `interval` seconds while changes trickle in."""
        while True:
            await asyncio.sleep(interval)
            if self._pending:
                await self.flush()

    async def flush(self) -> None:
        """Wait until every pipelined publish is stored; re-send, in order, from the first
        that failed (the message ids make re-sends of stored messages harmless). One flush at
        a time, so a later batch is never confirmed before an earlier one is re-sent."""
        async with self._flushing:
            pending, self._pending = self._pending, []
            failed_from: int | None = None
            for i, (_, _, _, future, kind) in enumerate(pending):
                try:
                    # Bounded: an ack lost with a dropped connection would otherwise stall the
                    # watcher for good; the re-send below is harmless if the message was stored.
                    ack = await asyncio.wait_for(future, timeout=ACK_TIMEOUT)
                except Exception as err:
                    log.warning("publish failed, will resend: %s", err)
                    failed_from = i
                    break
                self._count(ack, kind)
            if failed_from is None:
                return
            for i, (subject, body, headers, future, kind) in enumerate(pending[failed_from:]):
                if i > 0 and not future.done():
                    future.cancel()
                await self._publish_until_stored(subject, body, headers, kind)

    async def _publish_until_stored(
        self, subject: str, body: bytes, headers: dict[str, str], event: str
    ) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                ack = await self.js.publish(subject, body, headers=headers, timeout=5)
            except Exception as err:
                delay = min(5.0, 0.2 * 2**attempt)
                log.warning("publish to %s failed (%s); retrying in %.1fs", subject, err, delay)
                await asyncio.sleep(delay)
                continue
            self._count(ack, event)
            return

    def _count(self, ack: Any, event: str) -> None:
        """Count a confirmed event (``event`` is "<kind>.<change>"; '' for a request): stored,
        or dropped as a duplicate another replica (or an earlier run) stored first."""
        if not event:
            return
        kind, _, change = event.partition(".")
        if getattr(ack, "duplicate", False):
            DUPLICATES_DROPPED.labels(kind).inc()
        else:
            EVENTS_PUBLISHED.labels(kind, change).inc()

    async def emit(self, kind: Kind, change: str, obj: JsonObject, before: Known | None) -> None:
        key = ObjectKey(
            str((obj.get("metadata") or {}).get("namespace") or ""),
            str((obj.get("metadata") or {}).get("name") or ""),
        )
        parent = telemetry.context_from_annotation(obj)
        subject = subjects.subject(subjects.EVENTS, kind.name, key)
        requests = self._requests(kind, change, key, obj)
        with tracer.start_as_current_span(
            f"send {subjects.PREFIX}.{subjects.EVENTS}.{kind.name}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                **telemetry.messaging_attributes("send", subject),
                "messaging.message.id": events.change_id(
                    str((obj.get("metadata") or {}).get("uid") or ""),
                    str((obj.get("metadata") or {}).get("resourceVersion") or ""),
                    change,
                ),
                # The event and the requests it causes, all with this span's context.
                "messaging.batch.message_count": 1 + len(requests),
                "k8s.object.kind": kind.name,
                "k8s.object.key": str(key),
                "k8s.change": change,
            },
        ):
            trace_headers: dict[str, str] = {}
            telemetry.inject(trace_headers)
            headers, body = events.encode(
                kind=kind.name,
                change=change,
                obj=obj,
                extra_headers=trace_headers,
                extensions=extensions(kind, obj),
            )
            await self._send(subject, body, headers, f"{kind.name}.{change}")
            for controller, target in requests:
                await self.request(
                    controller, target, {**trace_headers, ORIGIN: f"watcher:{kind.name}.{change}"}
                )

    def _spec_changed(self, kind: Kind, change: str, key: ObjectKey, obj: JsonObject) -> bool:
        """Whether this change can alter desired state: a creation, a deletion, or a new
        metadata.generation (status writes and metadata-only edits keep the generation, as
        controller-runtime's GenerationChangedPredicate relies on)."""
        gen_key = (kind.name, key)
        generation = _generation(obj)
        previous = self._generations.get(gen_key)
        if change == "deleted":
            self._generations.pop(gen_key, None)
        else:
            self._generations[gen_key] = generation
        return change != "modified" or previous != generation

    def _requests(
        self, kind: Kind, change: str, key: ObjectKey, obj: JsonObject
    ) -> list[tuple[str, ObjectKey]]:
        if not kind.owned:
            # The CR's own status writes must not wake the reconciler again.
            return [(RECONCILE, key)] if self._spec_changed(kind, change, key, obj) else []
        owner = owner_key(obj)
        if owner is None:
            return []
        if kind.name == "pod":
            # Only a pod's readiness (and its coming and going) shows in the owner's status.
            if not self._readiness_changed(change, key, owner, obj):
                return []
            return [(STATUS, owner)] if self._counted_by_deployment(owner) else []
        self._note_counted(change, owner, obj)
        out = [(STATUS, owner)] if self._status_inputs_changed(change, key, obj) else []
        if self._spec_changed(kind, change, key, obj) and not (
            change != "deleted" and events.last_spec_writer(obj) == FIELD_MANAGER
        ):
            # A creation or new generation that our own apply made needs no reconcile: it is
            # the result of one. Anyone else's edit (drift) and any deletion do.
            out.insert(0, (RECONCILE, owner))
        return out

    def _status_inputs_changed(self, change: str, key: ObjectKey, obj: JsonObject) -> bool:
        """Whether a Deployment change can change its owner's status (see
        services.status.conditions.deployment_inputs); only a fingerprint is kept per object."""
        if change == "deleted":
            self._status_inputs.pop(key, None)
            return True
        fingerprint = hash(deployment_inputs(obj))
        previous = self._status_inputs.get(key)
        self._status_inputs[key] = fingerprint
        return change != "modified" or previous != fingerprint

    def _readiness_changed(
        self, change: str, key: ObjectKey, owner: ObjectKey, obj: JsonObject
    ) -> bool:
        ready = pod_ready(obj) and change != "deleted"
        previous = self._ready.get(key)
        delta = int(ready) - int(bool(previous))
        if delta:
            count = self._ready_pods.get(owner, 0) + delta
            if count > 0:
                self._ready_pods[owner] = count
            else:
                self._ready_pods.pop(owner, None)
        if change == "deleted":
            self._ready.pop(key, None)
            return True
        self._ready[key] = ready
        # An unready pod seen for the first time changes no status (the Deployment's own
        # events carry its counts); a ready one, or a flip, does.
        return ready if previous is None else previous != ready

    def _note_counted(self, change: str, owner: ObjectKey, deployment: JsonObject) -> None:
        """Remember the ready replicas the owner's Deployment reports."""
        if change == "deleted":
            self._counted.pop(owner, None)
            return
        status = deployment.get("status") or {}
        self._counted[owner] = int(status.get("readyReplicas") or 0)

    def _counted_by_deployment(self, owner: ObjectKey) -> bool:
        """Whether the owner's Deployment reports as many ready replicas as there are ready
        pods (or is not known here: then ask rather than guess)."""
        counted = self._counted.get(owner)
        return counted is None or counted == self._ready_pods.get(owner, 0)

    async def request(
        self, controller: str, key: ObjectKey, headers: Mapping[str, str] | None = None
    ) -> None:
        subject = subjects.subject(subjects.REQUESTS, controller, key)
        await self._send(subject, b"", dict(headers or {}), "")
        REQUESTS_PUBLISHED.labels(controller).inc()
        metrics.workqueue_adds_total.labels(controller).inc()


async def load_known(
    js: JetStreamContext, kind: str, *, namespace: str | None = None
) -> dict[ObjectKey, Known]:
    """The last change per object of `kind` that the stream holds, as the informer's starting
    point; objects whose last event is a deletion are left out."""
    filter_subject = subjects.wildcard(subjects.EVENTS, kind, namespace)
    known: dict[ObjectKey, Known] = {}
    config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, headers_only=True)
    try:
        async for msg in replay(js, filter_subject, stream=EVENTS_STREAM, config=config):
            if msg is None:
                continue
            headers = msg.headers or {}
            try:
                parsed = subjects.parse(msg.subject)
            except ValueError:
                continue
            ce_id = events.decode_value(headers.get("ce-id", ""))
            ce_type = events.decode_value(headers.get("ce-type", ""))
            if ce_type.endswith(".deleted"):
                known.pop(parsed.key, None)
                continue
            known[parsed.key] = Known(
                uid=ce_id.split(":", 1)[0],
                resource_version=events.decode_value(headers.get("ce-resourceversion", "")),
            )
    except Exception as err:
        raise TransientError(f"reading {kind} state from the stream: {err}") from err
    log.info("loaded %d known %s objects from the stream", len(known), kind)
    return known
