"""`memcached-operator status`: folds outcomes, Deployments and Pods into each CR's status.

Status requests (from the reconciler after every outcome, and from the watcher when an owned
Deployment or Pod changes) go through the same keyed work queue as reconciles, so pending
refreshes of a CR coalesce and one replica never runs two of them at once. Replicas hold no
lease on the CR (the status controller is ``exclusive="process"``): each write is conditional
on the resourceVersion its fold started from, so of two replicas refreshing one CR the second
write is refused, and that refresh reads the CR again and folds once more. A refresh
reads the CR, its Deployment and the CR's newest outcome (one batched direct get on the events
stream) and its ready pods (pod_index.py, an in-memory index of the stream's pod events), folds
them (conditions.py), and writes the status subresource only when something a reader can see
changed — and at most once per --min-interval per CR, which a burst of pod changes during a
rollout would otherwise turn into a write each. A refresh that is a step early (the applied
Deployment not streamed yet, the outcome not published yet, ready pods the Deployment has not
counted yet) writes nothing and leaves the write to that step's own request, so a healthy new
CR costs two writes: "rolling out" and "Available". Newsworthy condition transitions become
Kubernetes Events (one, Available, for a healthy new CR). While the reconcilers have a backlog
(--yield-backlog), refreshes pause, then run one at a time: Deployments first, their status
right after.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.context import Context
from prometheus_client import Counter

from memcached_operator.shared.api.contract import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    RECONCILE,
    label_value,
)
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.directget import StoredMsg
from memcached_operator.shared.bus.stream_admin import ALL_STREAMS
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.events import state
from memcached_operator.shared.events.outcomes import Outcome, OutcomeResult
from memcached_operator.shared.kube.client import (
    DEFAULT_MAX_PAGE,
    MEMCACHED,
    POD,
    ApiError,
    KubeClient,
)
from memcached_operator.shared.runtime import metrics, settings, telemetry
from memcached_operator.shared.runtime import process as runtime
from memcached_operator.shared.workqueue.controller import RECONCILE_CONTROLLER, STATUS_CONTROLLER
from memcached_operator.shared.workqueue.options import queue_from_args
from memcached_operator.shared.workqueue.types import ORIGIN, Prepared, Request, Result
from memcached_operator.status.conditions import fold_status
from memcached_operator.status.endpoints import ready_endpoints, ready_nodes
from memcached_operator.status.pod_index import INDEX, LIST, POD_READS, PodIndex
from memcached_operator.status.recorder import EventRecorder
from memcached_operator.status.settings import StatusSettings
from memcached_operator.status.transitions import status_changed, transitions

log = logging.getLogger("memcached_operator.status")

CONTROLLER = STATUS_CONTROLLER.name
STATUS_WRITES = Counter(
    "mcop_status_writes_total",
    "Status refreshes by what they did: written, skipped (nothing a reader sees changed), "
    "deferred (too soon after the last write), or awaiting (a step early: the request of the "
    "step under way brings the write)",
    ["result"],
)
WRITE_CONFLICTS = Counter(
    "mcop_status_write_conflicts_total",
    "Status writes the API server refused because the CR changed after the refresh read it "
    "(another status replica wrote it, or the stream's copy was behind); each such refresh "
    "reads the CR from the API server and folds it once more",
)
WRITTEN = "written"
SKIPPED = "skipped"
DEFERRED = "deferred"
AWAITING = "awaiting"
LAST_TRACE_ID = "lastTraceId"
REFRESHES_BY_ORIGIN = Counter(
    "mcop_status_refreshes_by_origin_total",
    "Status refreshes by the origin of their request (the newest of those coalesced into it: "
    "a watched change, or a reconcile's outcome; 'other' for any other header value) and by "
    "what they did (as mcop_status_writes_total, and 'gone')",
    ["origin", "result"],
)
# The origins a status request has (a header anyone who may publish requests can set: any
# other value is counted as "other", so it cannot add series).
ORIGINS = frozenset(
    [f"watcher:{kind}.{change}" for kind in ("deployment", "pod") for change in events.CHANGES]
    + [f"reconciler:{result}" for result in get_args(OutcomeResult)]
)
OTHER_ORIGIN = "other"


def origin_label(headers: Mapping[str, str] | None) -> str:
    """The request's origin as a metric label: one of :data:`ORIGINS`, or "other"."""
    origin = (headers or {}).get(ORIGIN, "")
    return origin if origin in ORIGINS else OTHER_ORIGIN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_flags(parser, StatusSettings)


def run(args: argparse.Namespace) -> int:
    config = settings.from_args(StatusSettings, args)
    return runtime.run("status", lambda stop: serve(config, stop))


async def last_outcome(js: JetStreamContext, key: subjects.ObjectKey) -> Outcome | None:
    found = await last_outcome_message(js, key)
    return found.outcome if found is not None else None


@dataclass(frozen=True)
class StoredOutcome:
    """The newest outcome of a CR with what its message says besides: where it is in the
    stream and the trace context of the reconcile that published it."""

    outcome: Outcome
    sequence: int
    context: Context


def outcome_subject(key: subjects.ObjectKey) -> str:
    return RECONCILE_CONTROLLER.outcome_subject(key)


def stored_outcome(msg: StoredMsg | None) -> StoredOutcome | None:
    """The outcome a stored message holds (None for none, or a malformed one)."""
    if msg is None:
        return None
    try:
        outcome = Outcome.from_json(msg.data)
    except ValueError as err:
        log.warning("ignoring a malformed outcome on %s: %s", msg.subject, err)
        return None
    return StoredOutcome(outcome, msg.seq, telemetry.extract(msg.headers))


def _believable(
    key: subjects.ObjectKey, stored: StoredOutcome | None, cr: dict[str, Any] | None
) -> StoredOutcome | None:
    """The outcome, unless it is about another object or another incarnation of this CR (a
    forged outcome, or one of a CR deleted and re-created since): those are ignored, and
    counted."""
    if stored is None or cr is None:
        return stored
    outcome = stored.outcome
    if outcome.key != str(key):
        metrics.messages_distrusted_total.labels(CONTROLLER, "outcome_key").inc()
        log.warning("ignoring an outcome for %s on the subject of %s", outcome.key, key)
        return None
    if outcome.uid != str((cr.get("metadata") or {}).get("uid") or ""):
        metrics.messages_distrusted_total.labels(CONTROLLER, "outcome_uid").inc()
        return None
    return stored


async def last_outcome_message(
    js: JetStreamContext, key: subjects.ObjectKey
) -> StoredOutcome | None:
    subject = outcome_subject(key)
    return stored_outcome((await state.snapshot(js, [subject])).message(subject))


def _trace_of(context: Context | None) -> int | None:
    ctx = telemetry.span_context(context)
    return ctx.trace_id if ctx is not None else None


def _revision(obj: dict[str, Any]) -> int:
    """metadata.resourceVersion as a number (etcd revisions are; -1 if it is not one)."""
    value = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(value) if value.isdigit() else -1


class StatusRefresher:
    """The status handler: one CR's status brought up to date per call.

    A refresh acts on two messages: the request (which may stand for several, coalesced) and
    the CR's newest outcome. Its span is a child of the request's context and links to the
    outcome's, except when it is the first refresh of this process to fold a new outcome of
    another trace: then the roles swap, so the status write that reports a reconcile is in
    that reconcile's trace even when a watcher's request (a pod became ready) replaced the
    reconciler's in the queue. ``status.lastTraceId`` names that trace too; it is written
    with a change a reader can see (conditions, replicas, generation), not on its own.
    """

    def __init__(
        self,
        kube: KubeClient,
        js: JetStreamContext,
        *,
        recorder: EventRecorder,
        min_interval: float,
        pods: PodIndex,
        index_wait: float = 2.0,
        settle: float = 30.0,
        max_page: int = DEFAULT_MAX_PAGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.max_page = max_page
        self.clock = clock
        self.js = js
        self.pods = pods
        self.index_wait = index_wait
        self.settle = settle
        # When a refresh first held back a pod-only change of a CR (see _settling).
        self._unsettled: dict[subjects.ObjectKey, float] = {}
        self.recorder = recorder
        self.min_interval = min_interval
        self._last_write: dict[subjects.ObjectKey, float] = {}
        # What this process last wrote per CR: (resourceVersion after the write, status).
        self._written: dict[subjects.ObjectKey, tuple[int, dict[str, Any]]] = {}
        # Stream sequence of the newest outcome folded per CR.
        self._folded: dict[subjects.ObjectKey, int] = {}

    async def prepare(self, request: Request) -> Result | Prepared:
        """Read what the refresh needs, outside the consumer span: which trace the span joins
        depends on the outcome read (see the class docstring). A deferral ends here, untraced."""
        key = request.key
        since = self.clock() - self._last_write.get(key, float("-inf"))
        if since < self.min_interval:
            # Too soon after this process's last write of the CR: come back without reading
            # anything (a burst of changes costs one deferral each, not one refresh each).
            STATUS_WRITES.labels(DEFERRED).inc()
            REFRESHES_BY_ORIGIN.labels(origin_label(request.headers), DEFERRED).inc()
            return Result(requeue_after=self.min_interval - since)
        # The outcome, the CR and its Deployment in one read of the stream, and alongside it
        # the pod index's barrier (see pod_index.py).
        wanted = (
            outcome_subject(key),
            state.event_subject("memcached", key),
            state.event_subject("deployment", key),
        )
        seen, indexed = await asyncio.gather(
            state.snapshot(self.js, wanted, at_least=state.after(request.headers)),
            self.pods.caught_up(key.namespace, timeout=self.index_wait),
        )
        stored = stored_outcome(seen.message(wanted[0]))
        cr = await seen.object_or_get(self.kube, "memcached", MEMCACHED, key)
        stored = _believable(key, stored, cr)
        deployment = seen.object("deployment", key)
        parent = telemetry.extract(request.headers)
        other: Context | None = None
        if stored is not None:
            other = stored.context
            new_outcome = self._folded.get(key) != stored.sequence
            if new_outcome and _trace_of(other) not in (None, _trace_of(parent)):
                parent, other = other, parent

        async def run() -> Result:
            result, what = await self._refresh(key, stored, cr, deployment, indexed=indexed)
            trace.get_current_span().set_attribute("status.result", what)
            REFRESHES_BY_ORIGIN.labels(origin_label(request.headers), what).inc()
            return result

        return Prepared(run=run, parent=parent, links=(other,))

    def _newest_status(
        self, key: subjects.ObjectKey, cr: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, int]:
        """The CR's current status and the resourceVersion it is at: the streamed one, unless
        this process wrote a newer one that the stream does not show yet (comparing with a
        stale status would see condition flips that did not happen and move their
        lastTransitionTime)."""
        streamed: dict[str, Any] | None = cr.get("status")
        mine = self._written.get(key)
        if mine is not None and mine[0] > _revision(cr):
            return mine[1], mine[0]
        # The stream has caught up with that write: forget it (with 10,000 CRs these copies
        # of every status would be most of this process's memory).
        self._written.pop(key, None)
        return streamed, _revision(cr)

    async def _refresh(
        self,
        key: subjects.ObjectKey,
        stored: StoredOutcome | None,
        cr: dict[str, Any] | None,
        deployment: dict[str, Any] | None,
        *,
        indexed: bool,
        reread: bool = False,
    ) -> tuple[Result, str]:
        """The refresh from what was read (``indexed``: the pod index has caught up with the
        stream) and what it did: gone, deferred, skipped or written.

        The write is conditional on the resourceVersion the fold started from. When the API
        server refuses it (another status replica wrote the CR meanwhile, or the stream's copy
        was behind), the CR is read from the API server and folded once more (``reread``); a
        second conflict is retried by the queue."""
        if cr is None:
            self.recorder.forget(str(key))
            self._last_write.pop(key, None)
            self._folded.pop(key, None)
            self._written.pop(key, None)
            self._unsettled.pop(key, None)
            return Result(), "gone"
        nodes, endpoints = await self._ready_pods(key, deployment, indexed=indexed)
        old, revision = self._newest_status(key, cr)
        if old is not None:
            cr = {**cr, "status": old}
        new = fold_status(
            cr=cr,
            deployment=deployment,
            nodes=nodes,
            endpoints=endpoints,
            outcome=stored.outcome if stored is not None else None,
            now=dt.datetime.now(dt.UTC),
        )
        # A new lastTraceId alone is no reason to write: every status write is a change the
        # watcher turns into a reconcile, whose (new) trace would make the next write, and so
        # on without end. It is written with the next change a reader can see.
        seen = {k: v for k, v in new.items() if k != LAST_TRACE_ID}
        if not status_changed(old, seen):
            self._note_folded(key, stored)
            self._unsettled.pop(key, None)
            STATUS_WRITES.labels(SKIPPED).inc()
            return Result(), SKIPPED
        if self._awaiting(key, cr, stored, deployment, old, seen):
            STATUS_WRITES.labels(AWAITING).inc()
            return Result(), AWAITING
        patch: dict[str, Any] = {"status": new}
        if revision >= 0:
            patch["metadata"] = {"resourceVersion": str(revision)}
        try:
            written = await self.kube.patch_status(MEMCACHED, key.namespace, key.name, patch)
        except ApiError as err:
            if err.status != 409 or reread:
                raise
            WRITE_CONFLICTS.inc()
            self._written.pop(key, None)
            current = await self.kube.get(MEMCACHED, key.namespace, key.name)
            stored = _believable(key, stored, current)
            return await self._refresh(
                key, stored, current, deployment, indexed=indexed, reread=True
            )
        self._written[key] = (_revision(written), written.get("status") or new)
        self._note_folded(key, stored)
        self._last_write[key] = self.clock()
        STATUS_WRITES.labels(WRITTEN).inc()
        log.debug("status written", extra={"key": str(key)})
        changed = [t for t in transitions(old, new) if t.newsworthy]
        if changed:
            await self.recorder.record(cr, changed)
        return Result(), WRITTEN

    def _awaiting(
        self,
        key: subjects.ObjectKey,
        cr: dict[str, Any],
        stored: StoredOutcome | None,
        deployment: dict[str, Any] | None,
        old: dict[str, Any] | None,
        new: dict[str, Any],
    ) -> bool:
        """Whether this refresh is a step early and the step's own request is on its way, so
        it can end without writing (and without coming back: that request brings the write).
        Only for --settle seconds: a step that never shows is written as it is by the next
        refresh after that."""
        if deployment is None and stored is not None and stored.outcome.result == "success":
            # The reconciler has applied the Deployment; the watcher has not streamed it yet,
            # and will ask for a refresh when it has.
            return time.time() - stored.outcome.time.timestamp() < self.settle
        meta = cr.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        outcome = stored.outcome if stored is not None else None
        if (
            deployment is not None
            and int((old or {}).get("observedGeneration") or 0) < generation
            and (
                outcome is None or outcome.uid != meta.get("uid") or outcome.generation < generation
            )
        ):
            # A generation not reported yet, and the Deployment streamed before the outcome of
            # the reconcile that wrote it; the reconciler asks for a refresh with its outcome.
            return self._within_settle(key)
        ready = ((deployment or {}).get("status") or {}).get("readyReplicas") or 0
        if (
            deployment is not None
            and len(new.get("nodes") or []) != ready
            and not status_changed(
                old,
                {
                    **new,
                    **{
                        field: (old or {}).get(field) or default
                        for field, default in (
                            ("nodes", []),
                            ("endpoints", []),
                            ("endpointCount", 0),
                        )
                    },
                },
            )
        ):
            # Only the ready pods changed, and the Deployment controller has not counted them
            # yet: its update (readyReplicas, conditions) comes next, with a request that
            # writes both at once.
            return self._within_settle(key)
        self._unsettled.pop(key, None)
        return False

    def _within_settle(self, key: subjects.ObjectKey) -> bool:
        """True until --settle seconds after this CR's refreshes started waiting for a step."""
        first = self._unsettled.setdefault(key, self.clock())
        return self.clock() - first < self.settle

    async def _ready_pods(
        self, key: subjects.ObjectKey, deployment: dict[str, Any] | None, *, indexed: bool
    ) -> tuple[list[str], list[str]]:
        """The CR's ready pods and their endpoints: from the pod index once it has caught up
        with the stream, else from the API server (only needed when the Deployment reports
        ready replicas)."""
        if indexed:
            POD_READS.labels(INDEX).inc()
            return self.pods.ready_pods(key), self.pods.ready_endpoints(key)
        if not (deployment is not None and (deployment.get("status") or {}).get("readyReplicas")):
            return [], []
        POD_READS.labels(LIST).inc()
        selector = ",".join(
            [f"{LABEL_INSTANCE}={label_value(key.name)}", f"{LABEL_MANAGED_BY}={MANAGED_BY}"]
        )
        cr = {"metadata": {"name": key.name, "namespace": key.namespace}}
        # A page at a time, keeping only names and endpoints: the pods a selector catches are
        # any a tenant labelled so, of any size, and this process serves every tenant.
        nodes: set[str] = set()
        endpoints: set[str] = set()
        pages = self.kube.list_pages(
            POD, namespace=key.namespace, label_selector=selector, max_bytes=self.max_page
        )
        async for page in pages:
            nodes.update(ready_nodes(cr, page.items))
            endpoints.update(ready_endpoints(cr, page.items))
        return sorted(nodes), sorted(endpoints)

    def _note_folded(self, key: subjects.ObjectKey, stored: StoredOutcome | None) -> None:
        if stored is not None:
            self._folded[key] = stored.sequence


async def serve(args: StatusSettings, stop: asyncio.Event) -> None:
    conn = await runtime.Connections.open(
        "status",
        args,
        streams=ALL_STREAMS,
        stop=stop,
    )
    queue = queue_from_args(
        conn,
        args,
        controller=CONTROLLER,
        yield_to=RECONCILE if args.yield_backlog >= 0 else None,
        yield_backlog=args.yield_backlog,
        yield_pause=args.yield_pause,
    )
    metrics.init_controller(CONTROLLER)
    for result in (WRITTEN, SKIPPED, DEFERRED, AWAITING):
        STATUS_WRITES.labels(result)
    for reason in ("outcome_key", "outcome_uid"):
        metrics.messages_distrusted_total.labels(CONTROLLER, reason)
    for source in (INDEX, LIST):
        POD_READS.labels(source)
    pods = PodIndex(conn.js)
    pods.start()
    refresher = StatusRefresher(
        conn.kube,
        conn.js,
        recorder=EventRecorder(conn.kube, instance=conn.worker),
        min_interval=args.min_interval,
        pods=pods,
        settle=args.settle,
    )
    await queue.start(refresher)
    log.info("status service started", extra={"worker": conn.worker})
    try:
        await stop.wait()
    finally:
        await queue.stop(timeout=25)
        await pods.stop()
        await conn.close()
        log.info("status service stopped")
