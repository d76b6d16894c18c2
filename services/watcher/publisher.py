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
workqueue adds, as those of :func:`memcached_operator.shared.workqueue.queue.enqueue` do.

Watched objects are written by tenants, so nothing they say is believed unchecked: the owner
of a Deployment or Pod comes from its controller reference (:func:`find_owner`), names must be
Kubernetes names and subjects stay within bounds (shared/bus/subjects.py), and a message that
cannot be published is dead-lettered so that the next one can be (:class:`Publisher`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from memcached_operator.shared.api.contract import (
    FIELD_MANAGER,
    OWNER_ANNOTATION,
    RECONCILE,
    STATUS,
)
from memcached_operator.shared.api.models import GROUP, KIND
from memcached_operator.shared.api.pods import pod_ip, pod_ready
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.replay import replay
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.kube.client import JsonObject
from memcached_operator.shared.runtime import metrics, telemetry
from memcached_operator.shared.runtime.errors import TransientError
from memcached_operator.shared.runtime.progress import TRACKER, Progress
from memcached_operator.shared.workqueue.queue import (
    DL_BODY_TRUNCATED,
    DL_CONTROLLER,
    DL_DELIVERIES,
    DL_ERROR,
    DL_REASON,
    DL_SUBJECT,
    DL_TIME,
    DL_WORKER,
    ORIGIN,
)
from memcached_operator.status.conditions import deployment_inputs
from memcached_operator.watcher.informer import Known

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
OWNER_REJECTED = Counter(
    "mcop_watcher_owner_rejected_total",
    "Changes of Deployments and Pods whose claimed owning Memcached was not believed (no "
    "request was sent for it), by reason",
    ["kind", "reason"],
)

ACK_TIMEOUT = 5.0
# The Deployment controller's label on the pods of one ReplicaSet, whose name it ends.
POD_TEMPLATE_HASH = "pod-template-hash"
MAX_NAME_LENGTH = 253  # a DNS subdomain, as object names are

# Why a claimed owner is not believed (label of mcop_watcher_owner_rejected_total).
INVALID_NAMESPACE = "InvalidNamespace"
INVALID_OWNER_NAME = "InvalidOwnerName"
OWNER_MISMATCH = "OwnerMismatch"
NO_CONTROLLER = "NoController"

# Dead letters of the watcher: mcop.deadletter.watcher.<ns>.<name>, with the work queue's
# Mcop-Deadletter-* headers. Reasons (CamelCase, like the work queue's):
DEADLETTER_CONTROLLER = "watcher"
MESSAGE_TOO_LARGE = "MessageTooLarge"
INVALID_SUBJECT = "InvalidSubject"
PERMISSION_DENIED = "PermissionDenied"
PUBLISH_FAILED = "PublishFailed"
DEADLETTER_BODY_BYTES = 1024
_MAX_HEADER_TEXT = 1000
# JetStream's "message size exceeds maximum allowed" (a stream's max_msg_size).
_REFUSED_BY_STREAM = frozenset({10054})
# nats-server's default max_payload, for a publisher without a connection (unit tests).
DEFAULT_MAX_PAYLOAD = 1024 * 1024
PROGRESS_SOURCE = "watcher-publish"


def _header_text(text: str) -> str:
    """Arbitrary text (an error, a subject) as one bounded, printable header value."""
    flat = " ".join(text.split()).encode("ascii", "backslashreplace").decode("ascii")
    return flat if len(flat) <= _MAX_HEADER_TEXT else flat[: _MAX_HEADER_TEXT - 3] + "..."


@dataclass(frozen=True)
class Kind:
    """A watched kind and how its changes map to requests."""

    name: str  # subject token and event type segment: memcached, deployment, pod
    owned: bool  # True: requests go to the owning Memcached


@dataclass(frozen=True)
class Owner:
    """The Memcached an owned object belongs to, as far as it can be believed: ``key`` None
    and ``rejected`` a reason when the object claims an owner that it cannot have."""

    key: ObjectKey | None
    rejected: str = ""
    detail: str = ""


def _controller_reference(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = meta.get("ownerReferences")
    for ref in refs if isinstance(refs, list) else []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return ref
    return None


def _group(api_version: object) -> str:
    text = str(api_version or "")
    return text.rpartition("/")[0] if "/" in text else ""


# The kinds the reconciler applies, each controlled by its Memcached directly.
CONTROLLED_BY_CR = frozenset({"deployment", "pdb", "service"})


def replica_set_name(deployment: str, template_hash: str) -> str:
    """The name the Deployment controller gives a Deployment's ReplicaSet: the Deployment's
    name cut to fit 253 characters with ``-<pod-template-hash>`` (generateReplicaSetName in
    kubernetes/pkg/controller/deployment/sync.go)."""
    room = MAX_NAME_LENGTH - 1 - len(template_hash)
    if len(deployment) > room > 0:
        deployment = deployment[:room]
    return f"{deployment}-{template_hash}"


def find_owner(kind: str, obj: Mapping[str, Any]) -> Owner:
    """The owning Memcached of a Deployment (``kind`` "deployment"), another object the
    reconciler applies (CONTROLLED_BY_CR) or a Pod ("pod").

    A Deployment's owner is its controller reference to a Memcached (same namespace, by
    definition of owner references); the reconciler's owner annotation, when present, must
    name the same CR. A Pod's controller is a ReplicaSet, so its owner is the annotation the
    reconciler puts in the pod template, believed only if the pod's controller is the
    ReplicaSet the Deployment controller named after the Deployment (:func:`replica_set_name`;
    the Deployment is named after the CR). Anything else an object says about its owner, in a
    namespace anyone may write to, is rejected with a reason and never becomes a subject.
    """
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    claimed = annotations.get(OWNER_ANNOTATION) if isinstance(annotations, Mapping) else None
    controller = _controller_reference(meta)
    if claimed is None and controller is None:
        return Owner(None)  # claims nothing (or a deletion stub): nobody to ask
    namespace = meta.get("namespace")
    if not isinstance(namespace, str) or not subjects.is_namespace(namespace):
        return Owner(None, INVALID_NAMESPACE, f"namespace {subjects.shown(str(namespace))}")
    if claimed is not None and not (isinstance(claimed, str) and subjects.is_object_name(claimed)):
        return Owner(
            None,
            INVALID_OWNER_NAME,
            f"annotation {OWNER_ANNOTATION} is not an object name: {subjects.shown(str(claimed))}",
        )
    if controller is None:
        return Owner(None, NO_CONTROLLER, f"annotation {OWNER_ANNOTATION} without a controller")
    ref_kind = str(controller.get("kind") or "")
    ref_name = controller.get("name")
    ref_group = _group(controller.get("apiVersion"))
    if not isinstance(ref_name, str) or not subjects.is_object_name(ref_name):
        return Owner(None, INVALID_OWNER_NAME, f"controller name {subjects.shown(str(ref_name))}")
    if kind in CONTROLLED_BY_CR and (ref_kind, ref_group) == (KIND, GROUP):
        if claimed is not None and claimed != ref_name:
            return Owner(
                None,
                OWNER_MISMATCH,
                f"annotation {OWNER_ANNOTATION} names {subjects.shown(claimed)}, "
                f"the controller {subjects.shown(ref_name)}",
            )
        return Owner(ObjectKey(namespace, ref_name))
    if kind == "pod" and (ref_kind, ref_group) == ("ReplicaSet", "apps") and claimed is not None:
        labels = meta.get("labels") or {}
        template_hash = labels.get(POD_TEMPLATE_HASH) if isinstance(labels, Mapping) else None
        if not template_hash or ref_name != replica_set_name(claimed, str(template_hash)):
            return Owner(
                None,
                OWNER_MISMATCH,
                f"annotation {OWNER_ANNOTATION} names {subjects.shown(claimed)}, "
                f"the controller is ReplicaSet {subjects.shown(ref_name)}",
            )
        return Owner(ObjectKey(namespace, claimed))
    return Owner(
        None,
        NO_CONTROLLER,
        f"controlled by {subjects.shown(ref_kind)} {subjects.shown(ref_name)}, not a Memcached",
    )


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


def _generation(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def _spec_fingerprint(obj: Mapping[str, Any]) -> int:
    """What stands in for metadata.generation of a kind without one (a Service): its spec
    and labels, so that their drift is noticed and nothing else is."""
    meta = obj.get("metadata") or {}
    return hash(json.dumps([obj.get("spec"), meta.get("labels")], sort_keys=True, default=str))


def message_size(headers: Mapping[str, str], body: bytes) -> int:
    """The bytes a message counts against the server's max_payload: the header block as
    nats-py writes it (``NATS/1.0``, one ``key: value`` line each, a blank line) and the body."""
    header_bytes = 0
    if headers:
        header_bytes = len(b"NATS/1.0\r\n\r\n") + sum(
            len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items()
        )
    return header_bytes + len(body)


def refusal(err: BaseException, subject: str, last_error: BaseException | None) -> str:
    """The reason a publish failed for good (a dead-letter reason), or '' when it may succeed
    if tried again. A publish the server denies is dropped by the server, which reports the
    violation asynchronously, so the publish itself only times out: the client's last error
    tells why."""
    if isinstance(err, nats.errors.MaxPayloadError):
        return MESSAGE_TOO_LARGE
    if isinstance(err, nats.errors.BadSubjectError | nats.errors.BadHeaderError):
        return INVALID_SUBJECT
    if isinstance(err, APIError) and err.err_code in _REFUSED_BY_STREAM:
        return MESSAGE_TOO_LARGE
    if isinstance(err, TimeoutError) and last_error is not None:
        text = str(last_error).lower()
        if "permissions violation" in text and f'"{subject.lower()}"' in text:
            return PERMISSION_DENIED
    return ""


@dataclass
class _Message:
    subject: str  # '' when no valid subject could be made for it
    body: bytes
    headers: dict[str, str]
    event: str  # "<kind>.<change>" for an event, '' for a request
    key: ObjectKey  # the object it is about, named in its dead-letter record


class Publisher:
    """Publishes events and requests for one watcher process.

    Each message is stored, or dead-lettered, before the watcher moves on: one that cannot
    be published (too large for the server, a subject over the bounds, refused by the server)
    goes to ``mcop.deadletter.watcher.<ns>.<name>`` with the reason, and so does one whose
    publish failed ``max_attempts`` times over at least ``give_up_after`` seconds while the
    connection was up, so that one bad object never blocks the others. Failures while
    disconnected are not counted: a message is dropped only when the dead-letter record was
    stored, and until then it is work waiting without progress (shared/runtime/progress.py).
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        nc: Client | None = None,
        worker: str = "",
        batch: int = 256,
        max_attempts: int = 5,
        give_up_after: float = 30.0,
        progress: Progress = TRACKER,
    ) -> None:
        self.js = js
        self.nc = nc
        self.worker = worker
        self.batch = batch
        self.max_attempts = max_attempts
        self.give_up_after = give_up_after
        self._progress = progress
        self._unsettled = 0
        self._pending: list[tuple[_Message, asyncio.Future[Any]]] = []
        self._generations: dict[tuple[str, ObjectKey], int] = {}
        self._ready: dict[ObjectKey, bool] = {}
        # Per owning CR: ready pods seen, and the readyReplicas its Deployment last reported.
        self._ready_pods: dict[ObjectKey, int] = {}
        self._counted: dict[ObjectKey, int] = {}
        self._status_inputs: dict[ObjectKey, int] = {}
        self._flushing = asyncio.Lock()

    def _waiting(self, delta: int) -> None:
        self._unsettled += delta
        self._progress.waiting(PROGRESS_SOURCE, self._unsettled)

    def _settled(self) -> None:
        self._waiting(-1)
        self._progress.progressed()

    def _max_payload(self) -> int:
        return int(self.nc.max_payload) if self.nc is not None else DEFAULT_MAX_PAYLOAD

    def _connected(self) -> bool:
        return self.nc is None or bool(self.nc.is_connected)

    async def _send(self, message: _Message) -> None:
        self._waiting(+1)
        size = message_size(message.headers, message.body)
        if size > self._max_payload():
            # The server would close the connection (nats-py counts the body only): never send.
            await self.flush()
            await self._store(
                message,
                refused=(
                    MESSAGE_TOO_LARGE,
                    f"{size} bytes with headers; the server takes {self._max_payload()}",
                ),
            )
            return
        try:
            future = await self.js.publish_async(
                message.subject, message.body, headers=message.headers
            )
        except Exception as err:
            # Disconnected, or the client's buffer is full: settle what is pending first so
            # the order per object holds, then publish this one synchronously.
            log.warning(
                "pipelined publish to %s refused (%s); publishing in order", message.subject, err
            )
            await self.flush()
            await self._store(message)
            return
        self._pending.append((message, future))
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
            for i, (message, future) in enumerate(pending):
                try:
                    # Bounded: an ack lost with a dropped connection would otherwise stall the
                    # watcher for good; the re-send below is harmless if the message was stored.
                    ack = await asyncio.wait_for(future, timeout=ACK_TIMEOUT)
                except Exception as err:
                    log.warning("publish failed, will resend: %s", err)
                    failed_from = i
                    break
                self._count(ack, message.event)
                self._settled()
            if failed_from is None:
                return
            for i, (message, future) in enumerate(pending[failed_from:]):
                if i > 0 and not future.done():
                    future.cancel()
                await self._store(message)

    async def _store(self, message: _Message, *, refused: tuple[str, str] | None = None) -> None:
        """Publish ``message`` until it is stored; or, once it is known that it cannot be
        (``refused``: reason and detail), until its dead-letter record is."""
        attempt = 0
        strikes: list[float] = []  # when publishes failed while connected
        while True:
            attempt += 1
            delay = min(5.0, 0.2 * 2**attempt)
            if refused is None:
                try:
                    ack = await self.js.publish(
                        message.subject, message.body, headers=message.headers, timeout=ACK_TIMEOUT
                    )
                except Exception as err:
                    refused = self._given_up(err, message, strikes)
                    if refused is None:
                        log.warning(
                            "publish to %s failed (%s); retrying in %.1fs",
                            message.subject,
                            err,
                            delay,
                        )
                        await asyncio.sleep(delay)
                        continue
                else:
                    self._count(ack, message.event)
                    self._settled()
                    return
            if await self._dead_letter(message, refused[0], refused[1], attempts=attempt):
                self._settled()
                return
            if refused[0] == PUBLISH_FAILED:
                refused = None  # try the message again, and the dead letter after its next failure
            await asyncio.sleep(delay)

    def _given_up(
        self, err: Exception, message: _Message, strikes: list[float]
    ) -> tuple[str, str] | None:
        """After a failed publish: the dead-letter reason and detail if ``message`` is to be
        given up, else None (``strikes`` collects the failures while connected)."""
        reason = refusal(err, message.subject, self.nc.last_error if self.nc is not None else None)
        if reason:
            return reason, repr(err)
        if not self._connected():
            return None  # the connection's trouble, not the message's
        now = time.monotonic()
        strikes.append(now)
        if len(strikes) < self.max_attempts or now - strikes[0] < self.give_up_after:
            return None
        return (
            PUBLISH_FAILED,
            f"{len(strikes)} attempts failed over {now - strikes[0]:.0f}s while connected; "
            f"the last: {err!r}",
        )

    async def _dead_letter(
        self, message: _Message, reason: str, detail: str, *, attempts: int
    ) -> bool:
        """Store ``message`` in the dead-letter stream with the reason; whether it was."""
        try:
            target = subjects.subject(subjects.DEADLETTER, DEADLETTER_CONTROLLER, message.key)
        except ValueError:
            target = f"{subjects.PREFIX}.{subjects.DEADLETTER}.{DEADLETTER_CONTROLLER}._._"
        headers = {k: v for k, v in message.headers.items() if not k.startswith("Nats-")}
        body = message.body
        if len(body) > DEADLETTER_BODY_BYTES:
            headers[DL_BODY_TRUNCATED] = str(len(body))
            body = body[:DEADLETTER_BODY_BYTES]
        headers.update(
            {
                DL_REASON: reason,
                DL_ERROR: _header_text(detail),
                DL_DELIVERIES: str(attempts),
                DL_SUBJECT: _header_text(message.subject),
                DL_CONTROLLER: DEADLETTER_CONTROLLER,
                DL_WORKER: self.worker,
                DL_TIME: datetime.now(UTC).isoformat(),
            }
        )
        msg_id = message.headers.get(events.MSG_ID)
        if msg_id:
            # Every replica dead-letters the same change: the stream keeps one record.
            headers[events.MSG_ID] = f"mcop-dl.{DEADLETTER_CONTROLLER}.{msg_id}"
        try:
            await self.js.publish(target, body, headers=headers, timeout=ACK_TIMEOUT)
        except Exception as err:
            log.error("could not dead-letter %s (will retry): %r", message.key, err)
            return False
        metrics.dead_lettered_total.labels(DEADLETTER_CONTROLLER, reason).inc()
        log.error(
            "dead-lettered %s about %s: %s: %s",
            "event " + message.event if message.event else "request",
            message.key,
            reason,
            _header_text(detail),
        )
        return True

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

    def owner(self, kind: Kind, obj: JsonObject) -> Owner:
        """The object's owner (see :func:`find_owner`); a rejected claim is counted and logged."""
        if not kind.owned:
            return Owner(None)
        owner = find_owner(kind.name, obj)
        if owner.rejected:
            OWNER_REJECTED.labels(kind.name, owner.rejected).inc()
            meta = obj.get("metadata") or {}
            log.warning(
                "ignoring the owner %s %s/%s claims: %s: %s",
                kind.name,
                subjects.shown(str(meta.get("namespace") or "")),
                subjects.shown(str(meta.get("name") or "")),
                owner.rejected,
                owner.detail,
            )
        return owner

    async def emit(self, kind: Kind, change: str, obj: JsonObject, before: Known | None) -> None:
        meta = obj.get("metadata") or {}
        raw_key = ObjectKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        try:
            key = subjects.object_key(raw_key.namespace, raw_key.name)
            subject = subjects.subject(subjects.EVENTS, kind.name, key)
        except ValueError as err:
            # The API server validates names, so this is not one of its objects' changes.
            headers, body = events.encode(kind=kind.name, change=change, obj=obj)
            self._waiting(+1)
            await self.flush()
            await self._store(
                _Message("", body, headers, f"{kind.name}.{change}", raw_key),
                refused=(INVALID_SUBJECT, str(err)),
            )
            return
        parent = telemetry.context_from_annotation(obj)
        owner = self.owner(kind, obj)
        requests = self._requests(kind, change, key, obj, owner.key)
        with tracer.start_as_current_span(
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
            trace_headers: dict[str, str] = {}
            telemetry.inject(trace_headers)
            headers, body = events.encode(
                kind=kind.name,
                change=change,
                obj=obj,
                extra_headers=trace_headers,
                extensions=extensions(kind, obj, owner),
            )
            await self._send(_Message(subject, body, headers, f"{kind.name}.{change}", key))
            for controller, target in requests:
                await self.request(
                    controller, target, {**trace_headers, ORIGIN: f"watcher:{kind.name}.{change}"}
                )

    def _spec_changed(self, kind: Kind, change: str, key: ObjectKey, obj: JsonObject) -> bool:
        """Whether this change can alter desired state: a creation, a deletion, or a new
        metadata.generation (status writes and metadata-only edits keep the generation, as
        controller-runtime's GenerationChangedPredicate relies on)."""
        gen_key = (kind.name, key)
        generation = _generation(obj) if kind.name != "service" else _spec_fingerprint(obj)
        previous = self._generations.get(gen_key)
        if change == "deleted":
            self._generations.pop(gen_key, None)
        else:
            self._generations[gen_key] = generation
        return change != "modified" or previous != generation

    def _requests(
        self, kind: Kind, change: str, key: ObjectKey, obj: JsonObject, owner: ObjectKey | None
    ) -> list[tuple[str, ObjectKey]]:
        if not kind.owned:
            # The CR's own status writes must not wake the reconciler again.
            return [(RECONCILE, key)] if self._spec_changed(kind, change, key, obj) else []
        if owner is None:
            return []
        if kind.name == "pod":
            # Only a pod's readiness (and its coming and going) shows in the owner's status.
            if not self._readiness_changed(change, key, owner, obj):
                return []
            return [(STATUS, owner)] if self._counted_by_deployment(owner) else []
        out: list[tuple[str, ObjectKey]] = []
        if kind.name == "deployment":
            # Only the Deployment's changes show in the owner's status.
            self._note_counted(change, owner, obj)
            if self._status_inputs_changed(change, key, obj):
                out.append((STATUS, owner))
        if self._spec_changed(kind, change, key, obj) and not (
            change != "deleted" and events.last_spec_writer(obj) == FIELD_MANAGER
        ):
            # A creation or new generation that our own apply made needs no reconcile: it is
            # the result of one. Anyone else's edit (drift) and any deletion do.
            out.insert(0, (RECONCILE, owner))
        return out

    def _status_inputs_changed(self, change: str, key: ObjectKey, obj: JsonObject) -> bool:
        """Whether a Deployment change can change its owner's status (see
        status/conditions.py, deployment_inputs); only a fingerprint is kept per object."""
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
        try:
            subject = subjects.subject(subjects.REQUESTS, controller, key)
        except ValueError as err:
            log.error("no request for %s: %s", subjects.shown(str(key)), err)
            return
        await self._send(_Message(subject, b"", dict(headers or {}), "", key))
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
