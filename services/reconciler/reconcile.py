"""The reconcile step: one request in, the CR's Deployment converged, one outcome out.

Level-based and idempotent, as in the reference Memcached operator: the request carries only
a key; the worker reads the CR (gone: nothing to do — the garbage collector removes the
Deployment through its owner reference), builds the desired Deployment (the Memcached-specific
part lives in `desired.py`), reads the live one from the event stream, and applies the
desired state with server-side apply only when the live object differs, stamped with the trace
of the write (KEP-5915's ``tracing.k8s.io/traceparent``, so the rollout it starts stays in that
trace). A Deployment of that name that another owner controls is never taken over: that is a
permanent OwnershipConflict (see :meth:`MemcachedReconciler._write` for how that is known
without reading every Deployment from the API server first). The streamed CR decides whether
to write, the API server's copy what to write (see `verify.py`). Every finished reconcile publishes
an outcome (for the status service and the audit stream) and asks the status service to
refresh the CR, both carrying the reconcile's trace context; an outcome that changes nothing
(nothing was written and the stream's newest outcome of the CR says the same, see
shared/events/outcomes.py) is not stored again, but the status refresh is still asked for, as
before.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter
from pydantic import ValidationError

from memcached_operator.reconciler import verify
from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api.contract import FIELD_MANAGER, owned_by
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.bus.directget import StoredMsg
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.events import state
from memcached_operator.shared.events.outcomes import Outcome, OutcomeResult
from memcached_operator.shared.kube.client import (
    DEPLOYMENT,
    MEMCACHED,
    PDB,
    SERVICE,
    ApiError,
    KubeClient,
    Resource,
)
from memcached_operator.shared.runtime import telemetry
from memcached_operator.shared.runtime.errors import PermanentError
from memcached_operator.shared.workqueue.controller import RECONCILE_CONTROLLER, STATUS_CONTROLLER
from memcached_operator.shared.workqueue.queue import enqueue
from memcached_operator.shared.workqueue.types import ORIGIN, Request, Result

log = logging.getLogger("memcached_operator.reconciler")
tracer = trace.get_tracer("memcached-operator.reconciler")

CONTROLLER = RECONCILE_CONTROLLER
OUTCOME_TYPE = "io.memcached-operator.reconcile.outcome"

OUTCOMES_NOT_STORED = Counter(
    "mcop_reconcile_outcomes_unchanged_total",
    "Reconcile outcomes not stored on the events stream because the newest stored one already "
    "said the same and nothing was written (the status refresh is still requested)",
)


def _ownership_conflict(
    resource: Resource, namespace: str, name: str, live: dict[str, Any]
) -> PermanentError:
    owners = [
        f"{r.get('kind')}/{r.get('name')}"
        for r in (live.get("metadata") or {}).get("ownerReferences") or []
        if r.get("controller")
    ]
    by = f"controlled by {owners[0]}" if owners else "not controlled by it"
    return PermanentError(
        "OwnershipConflict",
        f"{resource.kind} {namespace}/{name} already exists and is {by}; "
        f"rename the Memcached or delete that {resource.kind}",
    )


# The objects a Memcached owns: the event-stream kind each is streamed as (by the watcher,
# when labelled managed-by this operator), and where it lives in the API. All are named after
# the CR, so each is one subject of the stream per CR.
OWNED: tuple[tuple[str, Resource], ...] = (
    ("deployment", DEPLOYMENT),
    ("pdb", PDB),
    ("service", SERVICE),
)


@dataclass(frozen=True)
class _Write:
    """An owned object to apply: its desired state, the owning CR's uid, and whether with
    force."""

    resource: Resource
    desired: dict[str, Any]
    uid: str
    force: bool


@dataclass(frozen=True)
class _Delete:
    """An owned object the CR no longer wants, by the uid the stream shows it with."""

    resource: Resource
    uid: str


class Gone(Exception):
    """The CR was deleted between the stream's event and the API read: nothing to do."""


def _validation_message(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in err.errors()
    )


class MemcachedReconciler:
    """Converges one Memcached's Deployment per call; safe to run many of in parallel."""

    def __init__(
        self,
        kube: KubeClient,
        js: JetStreamContext,
        *,
        worker: str,
        progress_deadline_seconds: int | None = None,
    ) -> None:
        self.kube = kube
        self.js = js
        self.worker = worker
        self.progress_deadline_seconds = progress_deadline_seconds

    async def __call__(self, request: Request) -> Result:
        # The queue runs this inside the request's consumer span (shared/workqueue/tracing.py)
        # and settles the request by what it returns or raises.
        key, started = request.key, time.monotonic()
        cr_obj: dict[str, Any] | None = None
        previous: Outcome | None = None
        try:
            cr_obj, streamed, previous, verified = await self._observe(key, request.headers)
            cr_obj, plan = await self._plan(key, cr_obj, streamed, verified=verified)
            written = await self._converge(key, plan)
            trace.get_current_span().set_attribute("reconcile.written", written)
            log.debug(
                "reconciled",
                extra={"key": str(key), "written": written, "delivery": request.delivery},
            )
            await self._finish(
                key, cr_obj, "success", started=started, previous=None if written else previous
            )
            return Result()
        except Gone:
            trace.get_current_span().set_attribute("reconcile.result", "gone")
            return Result()
        except (PermanentError, ApiError) as err:
            # An API rejection is permanent or transient by its status; a permanent failure is
            # reported on the CR (a forged message says nothing about the CR: not that one).
            failure = err.classify() if isinstance(err, ApiError) else err
            if (
                isinstance(failure, PermanentError)
                and cr_obj is not None
                and not isinstance(err, verify.ForgedMessage)
            ):
                await self._finish(
                    key,
                    cr_obj,
                    "error",
                    started=started,
                    reason=failure.reason,
                    message=failure.message,
                    previous=previous,
                )
            if failure is err:
                raise
            raise failure from err

    async def _observe(
        self, key: ObjectKey, headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any] | None], Outcome | None, bool]:
        """The CR, its owned objects as streamed, its newest stored outcome, all in one round
        trip to NATS, each at least as new as the event that caused the request (``headers``: a
        replica behind it is not asked), and whether the CR came from the API server (it was
        never streamed).
        A CR that is gone is :class:`Gone`; a streamed CR its event does not vouch for is a
        :class:`~memcached_operator.reconciler.verify.ForgedMessage`."""
        seen = await state.snapshot(
            self.js,
            (
                state.event_subject("memcached", key),
                *(state.event_subject(kind, key) for kind, _ in OWNED),
                outcome_subject(key),
            ),
            at_least=state.after(headers),
        )
        previous = stored_outcome(seen.message(outcome_subject(key)))
        observed = seen.observed("memcached", key)
        cr_obj: dict[str, Any] | None = None
        if observed is None:
            # Never streamed (a request published before the watcher ran): ask the API.
            cr_obj = await self.kube.get(MEMCACHED, key.namespace, key.name)
        elif observed.exists:
            cr_obj = observed.obj
            message = seen.message(state.event_subject("memcached", key))
            verify.check_event(key, message.headers if message else {}, cr_obj)
        if cr_obj is None:
            raise Gone(key)
        streamed = {kind: seen.object(kind, key) for kind, _ in OWNED}
        return cr_obj, streamed, previous, observed is None

    async def _converge(self, key: ObjectKey, plan: list[_Write | _Delete]) -> bool:
        """Carry out the plan, the owned objects' writes at once (each is one request of its
        own kind, none depends on another): a reconcile waits one API round trip, not one per
        object. Every write is carried out; the first failure, in plan order, is raised.
        Whether anything was written."""
        results = await asyncio.gather(
            *(
                self._write(key, action)
                if isinstance(action, _Write)
                else self._delete(key, action)
                for action in plan
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return any(results)

    async def _plan(
        self,
        key: ObjectKey,
        cr_obj: dict[str, Any],
        streamed: dict[str, dict[str, Any] | None],
        *,
        verified: bool,
    ) -> tuple[dict[str, Any], list[_Write | _Delete]]:
        """The CR as finally believed, and the writes that converge its owned objects (none
        when every live one already matches). ``streamed``: each owned kind as the event
        stream shows it (only managed objects are streamed: None may also be a foreign one);
        ``verified``: ``cr_obj`` came from the API server, not the stream.

        Whether to write is decided from the stream; what to write only from the API server's
        CR (see :mod:`memcached_operator.reconciler.verify`): a write costs one GET more, a
        reconcile that finds nothing to do costs nothing.
        """
        while True:
            try:
                cr = Memcached.from_api(cr_obj)
            except ValidationError as err:
                if not verified:
                    # Admission keeps invalid specs out: believe it only from the API server.
                    cr_obj, verified = await self._from_api(key, cr_obj), True
                    continue
                raise PermanentError("InvalidSpec", _validation_message(err)) from err
            uid = cr.uid or ""
            wanted = {
                "deployment": desired_deployment(
                    cr, progress_deadline_seconds=self.progress_deadline_seconds
                ),
                "pdb": desired_pdb(cr),
                "service": desired_service(cr),
            }
            plan: list[_Write | _Delete] = []
            for kind, resource in OWNED:
                desired, live = wanted[kind], streamed.get(kind)
                ours = live is not None and owned_by(live, uid)
                if desired is None:
                    live_uid = str(((live or {}).get("metadata") or {}).get("uid") or "")
                    if ours and live_uid:
                        plan.append(_Delete(resource=resource, uid=live_uid))
                elif not (ours and live is not None and matches(live, desired)):
                    plan.append(_Write(resource=resource, desired=desired, uid=uid, force=ours))
            if not plan or verified:
                return cr_obj, plan
            cr_obj, verified = await self._from_api(key, cr_obj), True

    async def _write(self, key: ObjectKey, write: _Write) -> bool:
        """Apply one desired owned object, never outside the request's namespace.

        An object the stream shows as this CR's is applied with force (taking back fields
        someone else changed). Any other case — the stream has none (a new CR, or a foreign
        object the watcher does not stream) or one owned by someone else — is applied
        *without* force first: it creates a missing object in one request, and a foreign
        one makes the API server refuse (409 for fields another manager owns, 422 for a second
        controller reference or an immutable field), after which the live object is read and
        the refusal reported as OwnershipConflict. So the common path costs one request, and
        nothing is ever taken over.
        """
        desired, resource = write.desired, write.resource
        meta = desired["metadata"]
        if ObjectKey(str(meta.get("namespace") or ""), str(meta.get("name") or "")) != key:
            raise verify.ForgedMessage("key", f"the {resource.kind} for {key} would not be {key}")
        stamp = telemetry.traceparent()
        if stamp:
            # After the comparison: the trace of the last write is no reason to write again.
            meta["annotations"][telemetry.TRACEPARENT_ANNOTATION] = stamp
        try:
            await self.kube.apply(resource, desired, field_manager=FIELD_MANAGER, force=write.force)
        except ApiError as err:
            if write.force or err.status not in (409, 422):
                raise
            live = await self.kube.get(resource, key.namespace, key.name)
            if live is None or owned_by(live, write.uid):
                raise  # a race with a deletion or a conflict of our own: retried
            raise _ownership_conflict(resource, key.namespace, key.name, live) from err
        log.info("applied %s", resource.kind.lower(), extra={"key": str(key)})
        return True

    async def _delete(self, key: ObjectKey, delete: _Delete) -> bool:
        """Delete an owned object the CR no longer wants: by the request's key (never another
        name or namespace) and only while it is the object the stream showed as this CR's."""
        try:
            deleted = await self.kube.delete(
                delete.resource, key.namespace, key.name, uid=delete.uid
            )
        except ApiError as err:
            if err.status == 409:
                return False  # re-created since (the precondition failed): not ours to delete
            raise
        if deleted:
            log.info("deleted %s", delete.resource.kind.lower(), extra={"key": str(key)})
        return deleted

    async def _from_api(self, key: ObjectKey, streamed: dict[str, Any]) -> dict[str, Any]:
        """The CR from the API server, checked against the streamed copy; a CR deleted since
        is :class:`Gone`."""
        api = await self.kube.get(MEMCACHED, key.namespace, key.name)
        if api is None:
            raise Gone(key)
        return dict(verify.authoritative(key, streamed, api))

    async def _finish(
        self,
        key: ObjectKey,
        cr_obj: dict[str, Any],
        result: OutcomeResult,
        *,
        started: float,
        reason: str = "",
        message: str = "",
        previous: Outcome | None = None,
    ) -> None:
        """Publish the outcome, unless ``previous`` (the stream's newest, when this reconcile
        wrote nothing) already says the same."""
        meta = cr_obj.get("metadata") or {}
        outcome = Outcome(
            key=f"{key.namespace}/{key.name}",
            uid=str(meta.get("uid") or ""),
            generation=int(meta.get("generation") or 0),
            result=result,
            reason=reason,
            message=message,
            duration_seconds=round(time.monotonic() - started, 6),
            trace_id=telemetry.trace_id_of(trace.get_current_span()),
            time=dt.datetime.now(dt.UTC),
        )
        await publish_outcome(self.js, outcome, store=not outcome.same_news(previous))


def outcome_subject(key: ObjectKey) -> str:
    """Where the outcomes of a CR are stored (the newest is a direct get away)."""
    return CONTROLLER.outcome_subject(key)


def stored_outcome(msg: StoredMsg | None) -> Outcome | None:
    """The outcome a stored message holds (None for none, or one that does not parse)."""
    if msg is None:
        return None
    try:
        return Outcome.from_json(msg.data)
    except ValueError:
        return None


async def publish_outcome(js: JetStreamContext, outcome: Outcome, *, store: bool = True) -> None:
    """Store the outcome on the events stream (unless not ``store``: it would change nothing)
    and ask the status service to fold it in."""
    key = outcome.object_key
    subject = outcome_subject(key)
    with tracer.start_as_current_span(
        f"send {CONTROLLER.outcomes}",
        kind=SpanKind.PRODUCER,
        attributes={
            **telemetry.messaging_attributes("send", subject),
            # The outcome and the status request, both with this span's context.
            "messaging.batch.message_count": 2 if store else 1,
            "k8s.object.key": outcome.key,
            "reconcile.result": outcome.result,
            "reconcile.outcome_stored": store,
        },
    ) as span:
        trace_headers: dict[str, str] = {}
        telemetry.inject(trace_headers)
        attrs = {
            "specversion": events.SPECVERSION,
            "id": str(uuid.uuid4()),
            "source": "/memcached-operator/reconciler",
            "type": OUTCOME_TYPE,
            "subject": outcome.key,
            "time": outcome.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "kind": "reconcile",
            "namespace": key.namespace,
            "name": key.name,
            "resourceversion": "",
            "fieldmanager": FIELD_MANAGER,
        }
        headers = {f"ce-{k}": events.encode_value(v) for k, v in attrs.items()}
        headers["Content-Type"] = "application/json"
        headers[events.MSG_ID] = attrs["id"]
        headers.update(trace_headers)
        span.set_attribute("messaging.message.id", attrs["id"])
        stored_at = 0
        if store:
            stored_at = (await js.publish(subject, outcome.to_json(), headers=headers)).seq
        else:
            OUTCOMES_NOT_STORED.inc()
        await enqueue(
            js,
            controller=STATUS_CONTROLLER,
            key=key,
            # The status service reads this outcome: from a replica that holds it.
            headers={
                **trace_headers,
                ORIGIN: f"reconciler:{outcome.result}",
                **state.after_header(stored_at),
            },
        )
