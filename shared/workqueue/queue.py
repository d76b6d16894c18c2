"""A keyed work queue shared by a fleet of worker processes, built on JetStream.

A request is a message on ``mcop.requests.<controller>.<namespace>.<name>``: "bring this object
to its desired state". The requests stream keeps one message per subject, so requests that
wait for the same object coalesce into the newest. Every process of one controller pulls from
one durable consumer, so any worker may take any request, the way a consumer group shares work.
Handlers are level-based: a run that *starts* after a request was published satisfies it.

Exclusivity per object comes from a lease in the ``mcop-leases`` KV bucket, because JetStream
alone does not give it: when a request for an object arrives while a worker still holds the
older one, the stream replaces the older message and another worker receives the newer one at
once. So before running, a worker creates the object's lease key (create fails while another
run holds it); while the handler runs, it refreshes the lease (compare-and-swap on the
revision) and sends in-progress acks so the message is not redelivered; afterwards it settles
the message and deletes the lease (again only at its own revision). Each lease write carries a
TTL, so the lease of a killed worker frees itself; so does the delete marker a release leaves,
after a second, so that the next run of the object creates the key again in one round trip (a
worker also remembers the markers it wrote, for a run that comes sooner). A worker that finds
the lease held neither naks (a nak counts as a delivery and would push the request towards
the dead-letter limit) nor drops the message: it keeps it alive with in-progress acks and polls
the lease (woken at once when the holder is in the same process). While waiting, and once more
after acquiring if it had to wait, it asks the stream for the subject's newest message: if that
is not its own, a newer request will run after it, so it acks its stale one and lets go. (A
request that got the lease at once needs no such check: the stream keeps one message per
subject, so it was the newest when it was delivered, a moment before; in the rare race where a
newer one replaces it between its delivery and its start, both run, and the second is a no-op.)
Hence no two runs of an object overlap, and the requests that arrive during a run cause one
more run after it.

Why a lease and not hash partitions. Partitioning the subjects (``partition(N, ...)``) with one
owner per partition also serialises each object, but it needs what NATS pull consumers do not
provide: assigning partitions to live workers and rebalancing them when a worker joins, stops or
dies, which is the leader election we set out to avoid in another form. It also caps the
parallelism at N, lets one slow object hold up its whole partition, and makes a crashed
worker's partitions wait for the rebalance. The lease costs two small KV writes per run and
only makes a worker wait in the rare case that its object is being reconciled right then; any
worker takes any request, and a killed worker's request moves on after the ack wait and the
lease TTL. Like any TTL lease, it cannot protect against a holder stalled longer than the TTL
(the holder notices at its next refresh and cancels its handler); keep the TTL well above the
longest event-loop stall.

Failures and delivery counting. A handler raises :class:`PermanentError` to stop at once (the
message is terminated and ``on_permanent_error`` awaited; one marked ``dead_letter``, which
blames the message rather than the object, is dead-lettered at once instead). A failure of the
transient kind (runtime/errors.py, ``as_transient``: a TransientError, an API 5xx, 429 or 409, a
time-out, a broken connection to the API server or to NATS, a JetStream that is unavailable or
full for now) is retried with a capped exponential backoff with jitter (or the error's
``retry_after``) and does *not* count towards ``max_deliveries``: an API server down for three
minutes is no fault of the request, and must not dead-letter every request in flight. JetStream
counts every nak as a delivery, so such a retry is no nak: the queue publishes a copy of the
request marked ``Mcop-Not-Before`` (the backoff), ``Mcop-Transient-Retries`` (the backoff's
exponent) and ``Mcop-Failures`` (the attempts of earlier copies that did count, which JetStream
forgets with the original), only while no newer request waits (an expected-last-sequence check;
otherwise the newer one runs), and acks the original. The copy waits in the stream, not in a
worker: it holds no worker slot and no lease, so a few objects whose API calls keep failing
cannot starve the others (which is why the retry is not a loop inside the worker). Transient
retries have no limit, as in controller-runtime; so that such a loop hiding a real bug stays
visible, each one counts in ``mcop_workqueue_retries_total{kind="transient"}`` and logs a
warning. Any other exception is a failure of the handler itself: nak with backoff
(``kind="failure"``), and it counts. ``Request.delivery`` is the number of this attempt among
those that count: the failed attempts carried in ``Mcop-Failures``, plus this message's
deliveries that did not complete (a worker killed mid-run is redelivered after the ack wait), so
a request that crashes its worker every time still ends in the dead-letter stream: when
``max_deliveries`` is reached the request is published to
``mcop.deadletter.<controller>.<namespace>.<name>`` with its headers and body plus
``Mcop-Deadletter-*`` headers (reason, error, deliveries), ``on_dead_letter`` is awaited and the
message terminated. (When even the copy cannot be published, NATS itself being unreachable, the
queue falls back to a nak, which counts: once per request per NATS outage.) Poison requests (a
subject that does not parse, more than ``max_request_bytes``, a body that is not a JSON object,
a missing required header) go there at once (with the callback, unless the subject has no key to
report on). A result with ``requeue_after`` does not nak either: the queue publishes a copy of
the request marked ``Mcop-Not-Before`` (only if no newer request is waiting, by an
expected-last-sequence check) and without the failure counts (a success starts afresh) and acks
the original. The first delivery of a marked copy is always naked with the remaining delay (none
if it is due), which is the one redelivery not counted.

Yielding. A queue given ``yield_to`` (the status service's, given the reconciler's) polls that
controller's consumer and, while more than ``yield_backlog`` of its requests wait for a worker,
takes no new request for up to ``yield_pause`` seconds and then one at a time, until the backlog
has stayed small for ``yield_resume`` seconds (the requests taken last are still running then).
The work it defers is derived (a status is folded from what the reconciles did), its waiting
requests coalesce per object meanwhile, and on a shared API server and shared cores a burst of
new objects gets its Deployments sooner. The pause is bounded and one at a time is not none: if
the other controller has no workers at all, this one still progresses. (A fetch already
waiting when the pause begins may still bring its batch.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError
from prometheus_client import Counter

from memcached_operator.shared.bus.streams import (
    LEASES_STREAM,
    LEASES_SUBJECT_PREFIX,
    REQUESTS_STREAM,
)
from memcached_operator.shared.bus.subjects import (
    DEADLETTER,
    PREFIX,
    REQUESTS,
    ObjectKey,
    encode_token,
    parse,
    subject,
)
from memcached_operator.shared.runtime import metrics, progress
from memcached_operator.shared.runtime.backoff import backoff_delay, retry_delay
from memcached_operator.shared.runtime.errors import PermanentError, TransientError, as_transient

log = logging.getLogger(__name__)

# Handlers raise the errors of shared/runtime/errors.py; they are re-exported here.
__all__ = [
    "Handler",
    "KeyedWorkQueue",
    "PermanentError",
    "PoisonRequest",
    "Request",
    "Result",
    "TransientError",
    "backoff_delay",
    "enqueue",
    "retry_delay",
]

# Every request says who asked for it ("watcher:memcached.modified", "reconciler:success",
# ...); the services' queues require it, so a message without it is refused as poison.
ORIGIN = "Mcop-Origin"
# Headers the queue adds. Everything else on a request is the publisher's and passes through.
NOT_BEFORE = "Mcop-Not-Before"
FAILURES = "Mcop-Failures"
TRANSIENT_RETRIES = "Mcop-Transient-Retries"
DL_REASON = "Mcop-Deadletter-Reason"
DL_ERROR = "Mcop-Deadletter-Error"
DL_DELIVERIES = "Mcop-Deadletter-Deliveries"
DL_SUBJECT = "Mcop-Deadletter-Subject"
DL_SEQUENCE = "Mcop-Deadletter-Sequence"
DL_CONTROLLER = "Mcop-Deadletter-Controller"
DL_WORKER = "Mcop-Deadletter-Worker"
DL_TIME = "Mcop-Deadletter-Time"
DL_BODY_TRUNCATED = "Mcop-Deadletter-Body-Truncated"

# Dead-letter reasons (CamelCase, like condition reasons).
MAX_DELIVERIES_EXCEEDED = "MaxDeliveriesExceeded"
UNPARSABLE_SUBJECT = "UnparsableSubject"
REQUEST_TOO_LARGE = "RequestTooLarge"
MALFORMED_BODY = "MalformedBody"
MISSING_HEADER = "MissingHeader"

_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = (10071, 10164)
_KV_OPERATION = "KV-Operation"
_CONTROLLER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MAX_HEADER_VALUE = 1000

# Values of the kind label of mcop_workqueue_retries_total.
TRANSIENT = "transient"
FAILURE = "failure"
# Beside workqueue_retries_total (controller-runtime's, which counts both kinds): a transient
# retry loop has no limit, so it must show.
retries_total = Counter(
    "mcop_workqueue_retries_total",
    "Retries of requests by kind: transient (an outage or time-out of the API server or NATS; "
    "retried without limit and not counted towards max deliveries) or failure (the handler "
    "failed; counted, dead-lettered at max deliveries)",
    ["controller", "kind"],
)


@dataclass(frozen=True)
class Request:
    """One request to reconcile ``key``, as the handler sees it.

    ``headers`` and ``body`` are what the publisher sent (``traceparent`` included; a copy
    made for ``requeue_after`` or a transient retry also carries the queue's ``Mcop-*``
    headers). ``delivery`` is 1 on the first attempt and grows with each one that failed in a
    way that counts towards ``max_deliveries`` (not a transient failure); ``retries`` is the
    number of transient failures before this attempt.
    """

    key: ObjectKey
    controller: str
    headers: Mapping[str, str]
    body: bytes
    delivery: int
    published_at: datetime
    sequence: int
    retries: int = 0

    def payload(self) -> dict[str, Any]:
        """The JSON body as a dict (empty when there is no body)."""
        if not self.body:
            return {}
        doc: dict[str, Any] = json.loads(self.body)
        return doc


@dataclass(frozen=True)
class Result:
    """What a successful run asks for: nothing, or another run ``requeue_after`` seconds later."""

    requeue_after: float | None = None


class Handler(Protocol):
    async def __call__(self, request: Request, /) -> Result: ...


class PoisonRequest(PermanentError):
    """A request the queue rejects before any handler sees it."""


DeadLetterCallback = Callable[[Request, Exception], Awaitable[None]]
PermanentErrorCallback = Callable[[Request, PermanentError], Awaitable[None]]


def lease_name(controller: str, key: ObjectKey) -> str:
    """The KV key of an object's lease: the subject tokens, with ``~`` (not allowed) as ``=``."""
    tokens = (controller, encode_token(key.namespace), encode_token(key.name))
    return ".".join(tokens).replace("~", "=")


async def enqueue(
    js: JetStreamContext,
    *,
    controller: str,
    key: ObjectKey,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> int:
    """Publish a request to reconcile ``key``; returns its stream sequence.

    A request still waiting for the same key is replaced by this one. ``body`` is empty or a
    small JSON object.
    """
    if body:
        _check_body(body)
    ack = await js.publish(
        subject(REQUESTS, controller, key), body, headers=dict(headers) if headers else None
    )
    metrics.workqueue_adds_total.labels(controller).inc()
    return ack.seq


def _check_body(body: bytes) -> None:
    try:
        doc = json.loads(body.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError is one
        raise PoisonRequest(MALFORMED_BODY, f"the body is not JSON in UTF-8: {err}") from None
    if not isinstance(doc, dict):
        raise PoisonRequest(
            MALFORMED_BODY, f"the body must be a JSON object, not {type(doc).__name__}"
        )


def _header_value(text: str) -> str:
    """Fit arbitrary text (an error message) into one header value."""
    flat = " ".join(text.split())
    flat = flat.encode("ascii", "backslashreplace").decode("ascii")
    return flat if len(flat) <= _MAX_HEADER_VALUE else flat[: _MAX_HEADER_VALUE - 3] + "..."


def _publisher_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers to copy onto a new message: without JetStream's own (``Nats-*``), which
    would make the copy a duplicate (``Nats-Msg-Id``) or fail an expectation."""
    return {k: v for k, v in headers.items() if not k.startswith("Nats-")}


class LeaseLost(Exception):
    """The lease expired or was taken by another worker while its holder was running."""


class _Leases:
    """Create-if-absent, compare-and-swap and delete on the lease bucket, each with a TTL."""

    MARKER_TTL = 1.0  # seconds a release's delete marker stays in the bucket

    def __init__(self, js: JetStreamContext, *, ttl: float) -> None:
        self._js = js
        self.ttl = ttl
        self._ttl_header = f"{max(1, math.ceil(ttl))}s"
        # name -> (revision, monotonic time) of the delete markers this process wrote that
        # may still be in the bucket: the revision a create must expect.
        self._markers: dict[str, tuple[int, float]] = {}

    async def try_acquire(self, name: str, value: bytes) -> int | None:
        """The new lease revision, or None when another run holds the lease."""
        subject_ = LEASES_SUBJECT_PREFIX + name
        marker = self._markers.pop(name, None)
        fresh = marker is not None and time.monotonic() - marker[1] < self.MARKER_TTL
        expected = marker[0] if marker and fresh else 0
        for _ in range(3):
            try:
                return await self._write(subject_, value, expected)
            except APIError as err:
                if err.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
            # The key exists: a live lease, or the marker a released one leaves behind.
            try:
                current = await self._js.get_last_msg(LEASES_STREAM, subject_, direct=True)
            except NotFoundError:
                expected = 0  # expired in between
                continue
            if (current.headers or {}).get(_KV_OPERATION) not in ("DEL", "PURGE"):
                return None
            expected = current.seq or 0
        return None

    async def refresh(self, name: str, revision: int, value: bytes) -> int:
        try:
            return await self._write(LEASES_SUBJECT_PREFIX + name, value, revision)
        except APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                raise LeaseLost(name) from None
            raise

    async def release(self, name: str, revision: int) -> None:
        headers = {
            _KV_OPERATION: "DEL",
            _EXPECTED_LAST_SUBJECT_SEQ: str(revision),
            "Nats-TTL": f"{math.ceil(self.MARKER_TTL)}s",
        }
        try:
            ack = await self._js.publish(LEASES_SUBJECT_PREFIX + name, b"", headers=headers)
        except APIError as err:
            if err.err_code not in _WRONG_LAST_SEQUENCE:
                raise
            log.warning("lease %s was no longer ours when released", name)
            return
        now = time.monotonic()
        # Oldest first (insertion order): forget the expired ones, which are gone from the
        # bucket too, so this holds only the last second's releases.
        for old, (_, written) in list(self._markers.items()):
            if now - written < self.MARKER_TTL:
                break
            del self._markers[old]
        self._markers.pop(name, None)
        self._markers[name] = (ack.seq, now)

    async def _write(self, subject_: str, value: bytes, expected: int) -> int:
        headers = {_EXPECTED_LAST_SUBJECT_SEQ: str(expected), "Nats-TTL": self._ttl_header}
        ack = await self._js.publish(subject_, value, headers=headers)
        return ack.seq


@dataclass
class _Held:
    name: str
    revision: int
    value: bytes
    lost: bool = False
    waited: bool = False  # another run held the lease first


class KeyedWorkQueue:
    """One process's share of a controller's request queue; see the module docstring.

    ``start(handler)`` begins taking requests, running at most ``concurrency`` at a time;
    ``stop()`` stops taking them, lets running handlers finish and settles their messages.
    """

    def __init__(
        self,
        nc: Client,
        *,
        controller: str,
        concurrency: int = 8,
        ack_wait: float = 30.0,
        lease_ttl: float = 30.0,
        max_deliveries: int = 10,
        backoff_base: float = 0.2,
        backoff_cap: float = 60.0,
        max_request_bytes: int = 64 * 1024,
        required_headers: Collection[str] = (),
        on_dead_letter: DeadLetterCallback | None = None,
        on_permanent_error: PermanentErrorCallback | None = None,
        worker_id: str | None = None,
        fetch_timeout: float = 1.0,
        depth_interval: float = 5.0,
        yield_to: str | None = None,
        yield_backlog: int = 16,
        yield_interval: float = 0.5,
        yield_resume: float = 1.0,
        yield_pause: float = 10.0,
    ) -> None:
        if not _CONTROLLER_NAME.fullmatch(controller):
            raise ValueError(f"controller name must be a lower-case DNS label: {controller!r}")
        if concurrency < 1 or max_deliveries < 1:
            raise ValueError("concurrency and max_deliveries must be at least 1")
        if ack_wait <= 0 or lease_ttl <= 0:
            raise ValueError("ack_wait and lease_ttl must be positive")
        self.controller = controller
        self.durable = f"mcop-{controller}"
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._nc = nc
        self._js = nc.jetstream()
        self._concurrency = concurrency
        self._ack_wait = ack_wait
        self._lease_ttl = lease_ttl
        self._max_deliveries = max_deliveries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_request_bytes = max_request_bytes
        self._required_headers = tuple(required_headers)
        self._on_dead_letter = on_dead_letter
        self._on_permanent_error = on_permanent_error
        self._fetch_timeout = fetch_timeout
        self._depth_interval = depth_interval
        self._yield_to = f"mcop-{yield_to}" if yield_to else None
        self._yield_backlog = yield_backlog
        self._yield_interval = yield_interval
        self._yield_resume = yield_resume
        self._yield_pause = yield_pause
        self._yielding = False
        self._limit = concurrency  # requests this queue may run at once right now

        self._handler: Handler | None = None
        self._leases = _Leases(self._js, ttl=lease_ttl)
        self._psub: JetStreamContext.PullSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._released: dict[str, asyncio.Event] = {}
        self._fetch_task: asyncio.Task[None] | None = None
        self._depth_task: asyncio.Task[None] | None = None
        self._yield_task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def filter_subject(self) -> str:
        return f"{PREFIX}.{REQUESTS}.{self.controller}.>"

    async def start(self, handler: Handler) -> None:
        """Create or update the controller's consumer and start taking requests."""
        if self._fetch_task is not None:
            raise RuntimeError("the work queue was already started")
        self._handler = handler
        await self._ensure_consumer()
        await self._bound_lease_ttl()
        self._psub = await self._js.pull_subscribe_bind(
            durable=self.durable, stream=REQUESTS_STREAM
        )
        metrics.max_concurrent_reconciles.labels(self.controller).set(self._concurrency)
        metrics.active_workers.labels(self.controller)  # exported as 0 from the start
        for family in (
            metrics.worker_queue_duration_seconds,
            metrics.delivery_duration_seconds,
            metrics.lease_wait_seconds,
            metrics.idle_seconds_total,
        ):
            family.labels(self.controller, self.worker_id)
        for kind in (TRANSIENT, FAILURE):
            retries_total.labels(self.controller, kind)
        self._fetch_task = asyncio.create_task(self._fetch_loop(), name=f"{self.durable}-fetch")
        self._depth_task = asyncio.create_task(self._depth_loop(), name=f"{self.durable}-depth")
        if self._yield_to is not None:
            self._yield_task = asyncio.create_task(
                self._yield_loop(self._yield_to), name=f"{self.durable}-yield"
            )
        log.info(
            "work queue %s started: worker %s, concurrency %d, ack wait %.1fs, lease TTL %.1fs",
            self.controller,
            self.worker_id,
            self._concurrency,
            self._ack_wait,
            self._leases.ttl,
        )

    async def stop(self, timeout: float = 25.0) -> None:
        """Stop taking requests, let running handlers finish (up to ``timeout``), settle them.

        Requests taken but not started (waiting for a lease) are handed back at once. Handlers
        still running at the deadline are cancelled and their requests naked, so another
        worker runs them.
        """
        if self._fetch_task is None or self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stopping.set()
        log.info("work queue %s stopping: %d requests in flight", self.controller, len(self._tasks))
        # Let a fetch in progress return rather than cancel it: a cancelled fetch can leave a
        # message on its way to this process, which would then wait for the ack wait.
        await asyncio.wait({self._fetch_task}, timeout=max(0.0, deadline - loop.time()))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
        leftovers = [*self._tasks, self._fetch_task]
        leftovers += [t for t in (self._depth_task, self._yield_task) if t is not None]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=max(1, math.ceil(deadline - loop.time())))
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
        log.info("work queue %s stopped", self.controller)

    # -- taking requests --------------------------------------------------------------------

    async def _ensure_consumer(self) -> None:
        config = api.ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            description=f"memcached-operator: requests of controller {self.controller}",
            filter_subject=self.filter_subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            # The queue dead-letters by itself so that it can record why.
            max_deliver=-1,
            # Requests deferred by a retry delay or requeue_after stay ack-pending; a limit
            # would let a backlog of them stall all new work.
            max_ack_pending=-1,
        )
        try:
            await self._js.add_consumer(REQUESTS_STREAM, config)
        except NotFoundError:
            raise RuntimeError(
                f"stream {REQUESTS_STREAM} not found: run `memcached-operator streams ensure` first"
            ) from None

    async def _bound_lease_ttl(self) -> None:
        info = await self._js.stream_info(LEASES_STREAM)
        bucket_ttl = info.config.max_age or 0.0
        if bucket_ttl and self._lease_ttl > bucket_ttl:
            log.warning(
                "lease TTL %.1fs exceeds the TTL of the lease bucket (%.1fs); using the latter",
                self._lease_ttl,
                bucket_ttl,
            )
            self._leases = _Leases(self._js, ttl=bucket_ttl)

    async def _fetch_loop(self) -> None:
        assert self._psub is not None
        failures = 0
        while not self._stopping.is_set():
            free = self._limit - len(self._tasks)
            if free <= 0:
                self._slot_freed.clear()
                await self._wait(self._slot_freed, self._stopping, within=None)
                continue
            fetching = time.monotonic()
            try:
                msgs = await self._psub.fetch(batch=free, timeout=self._fetch_timeout)
            except TimeoutError:
                self._idle(free, since=fetching)
                continue  # nothing to do (nats.errors.TimeoutError is one of these)
            except Exception as err:
                failures += 1
                # One line per streak of failures, not one per attempt (a bus restart must not
                # flood the log).
                if failures == 1:
                    log.warning("fetching requests of %s failed: %r", self.controller, err)
                await self._wait(self._stopping, within=min(5.0, 0.25 * 2**failures))
                with contextlib.suppress(Exception):
                    await self._ensure_consumer()
                continue
            if failures:
                log.info(
                    "fetching requests of %s again after %d failures", self.controller, failures
                )
                failures = 0
            self._idle(free, since=fetching)
            progress.TRACKER.progressed()  # liveness: requests are being taken
            for msg in msgs:
                task = asyncio.create_task(self._process(msg))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    def _idle(self, free: int, *, since: float) -> None:
        """Count the slot-seconds ``free`` slots waited in one fetch."""
        waited = time.monotonic() - since
        metrics.idle_seconds_total.labels(self.controller, self.worker_id).inc(free * waited)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()
        progress.TRACKER.progressed()

    async def _depth_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                info = await self._js.consumer_info(REQUESTS_STREAM, self.durable)
                depth = (info.num_pending or 0) + (info.num_ack_pending or 0)
                metrics.workqueue_depth.labels(self.controller).set(depth)
                # Liveness: requests no worker has fetched yet are work waiting.
                progress.TRACKER.waiting(self.durable, info.num_pending or 0)
            except Exception as err:
                log.debug("could not read the depth of %s: %r", self.durable, err)
            await self._wait(self._stopping, within=self._depth_interval)

    @property
    def yielding(self) -> bool:
        """Whether this queue holds back (pauses, then runs one request at a time) because
        ``yield_to`` has a backlog."""
        return self._yielding

    async def _yield_loop(self, durable: str) -> None:
        """Poll the backlog of the controller this one yields to (requests no worker has
        taken yet) and hold back while it exceeds ``yield_backlog`` (see the module docstring)."""
        failures = 0
        calm_since: float | None = None  # while yielding: since when the backlog is small
        since: float | None = None  # when this queue began to yield
        while not self._stopping.is_set():
            backlog = 0
            try:
                info = await self._js.consumer_info(REQUESTS_STREAM, durable)
                backlog = info.num_pending or 0
                failures = 0
            except NotFoundError:
                failures = 0  # no worker of that controller has started yet: nothing waits
            except Exception as err:
                failures += 1
                if failures == 1:  # one line per streak (a NATS restart, a missing permission)
                    log.warning("cannot read the backlog of %s, not yielding: %r", durable, err)
            now = time.monotonic()
            if backlog > self._yield_backlog:
                yielding, calm_since = True, None
            elif failures or not self._yielding:
                yielding = False  # never hold back on a guess
            else:
                # The last requests taken are still running: resume once the backlog has
                # stayed small for yield_resume seconds, not the moment the last one is taken.
                calm_since = now if calm_since is None else calm_since
                yielding = now - calm_since < self._yield_resume
            if yielding != self._yielding:
                self._yielding = yielding
                since = now if yielding else None
                metrics.workqueue_yielding.labels(self.controller).set(int(yielding))
            limit = self._concurrency
            if since is not None:
                limit = 0 if now - since < self._yield_pause else 1
            if limit != self._limit:
                self._limit = limit
                log.info(
                    "%s: %d at a time (%d requests of %s waiting)",
                    self.controller,
                    limit,
                    backlog,
                    durable,
                )
                self._slot_freed.set()  # let the fetch loop recompute its free slots
            await self._wait(self._stopping, within=self._yield_interval * min(20, 1 + failures))

    @staticmethod
    async def _wait(*events: asyncio.Event, within: float | None) -> None:
        """Until one of ``events`` is set or ``within`` seconds pass."""
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # -- handling one request ---------------------------------------------------------------

    async def _process(self, msg: Msg) -> None:
        try:
            await self._process_message(msg)
        except asyncio.CancelledError:
            # stop() ran out of time: hand the request to another worker now.
            await self._settle(msg, "nak")
            raise
        except Exception:
            log.exception("unexpected failure handling %s; retrying it shortly", msg.subject)
            await self._settle(msg, "nak", delay=1.0)

    async def _process_message(self, msg: Msg) -> None:
        meta = msg.metadata
        headers: dict[str, str] = dict(msg.headers or {})
        body = msg.data or b""
        try:
            key = self._parse_key(msg.subject)
        except PoisonRequest as error:
            await self._dead_letter(msg, None, error)
            return

        not_before = _float_header(headers.get(NOT_BEFORE))
        # The first delivery of a marked copy is its deferral, whenever it arrives (so the
        # count is exact); the counted failures of earlier copies come in a header.
        deferrals = 1 if not_before is not None else 0
        delivery = _count_header(headers.get(FAILURES)) + max(1, meta.num_delivered - deferrals)
        request = Request(
            key=key,
            controller=self.controller,
            headers=headers,
            body=body,
            delivery=delivery,
            published_at=meta.timestamp,
            sequence=meta.sequence.stream,
            retries=_count_header(headers.get(TRANSIENT_RETRIES)),
        )
        try:
            self._check_content(request)
        except PoisonRequest as error:
            # The key is known, so the callback can tell the object's owner what went wrong.
            await self._dead_letter(msg, request, error)
            return
        if delivery > self._max_deliveries:
            crashed = PermanentError(
                MAX_DELIVERIES_EXCEEDED,
                f"{delivery - 1} attempts failed or did not complete "
                "(did its handling crash the worker?)",
            )
            await self._dead_letter(msg, request, crashed)
            return
        if not_before is not None and meta.num_delivered == 1:
            await self._settle(msg, "nak", delay=max(0.0, not_before - time.time()))
            return
        if self._stopping.is_set():
            await self._settle(msg, "nak")
            return
        queued_since = max(request.published_at.timestamp(), not_before or 0.0)
        delivered = time.time()
        metrics.delivery_duration_seconds.labels(self.controller, self.worker_id).observe(
            max(0.0, delivered - queued_since)
        )

        # No newest-request check before the first lease attempt: a request was the newest of
        # its object when it was delivered a moment ago (the stream keeps one per subject), so
        # that check would cost every run a round trip to save a no-op run in a rare race. It
        # is made while waiting for the lease and once after it, when a newer request is
        # likely (it arrived while another run held the object).
        try:
            held = await self._acquire(msg, request)
        except Exception as err:
            transient = as_transient(err)
            if transient is None:
                raise
            # NATS failing under the lease: not the request's fault either.
            await self._retry_transient(msg, request, transient)
            return
        metrics.lease_wait_seconds.labels(self.controller, self.worker_id).observe(
            time.time() - delivered
        )
        if held is None:
            return
        try:
            if held.waited and await self._superseded(msg):
                await self._let_go(msg)
                return
            queued = max(0.0, time.time() - queued_since)
            metrics.workqueue_queue_duration_seconds.labels(self.controller).observe(queued)
            metrics.worker_queue_duration_seconds.labels(self.controller, self.worker_id).observe(
                queued
            )
            await self._run(msg, request, held)
        finally:
            if not held.lost:
                with contextlib.suppress(Exception):
                    await self._leases.release(held.name, held.revision)
            waiting = self._released.pop(held.name, None)
            if waiting is not None:
                waiting.set()

    def _parse_key(self, subject_: str) -> ObjectKey:
        try:
            parsed = parse(subject_)
        except ValueError as err:
            raise PoisonRequest(UNPARSABLE_SUBJECT, str(err)) from None
        if parsed.family != REQUESTS or parsed.kind != self.controller:
            raise PoisonRequest(
                UNPARSABLE_SUBJECT, f"not a request of controller {self.controller}: {subject_}"
            )
        return parsed.key

    def _check_content(self, request: Request) -> None:
        size = len(request.body) + sum(len(k) + len(v) + 4 for k, v in request.headers.items())
        if size > self._max_request_bytes:
            raise PoisonRequest(
                REQUEST_TOO_LARGE,
                f"the request has {size} bytes, more than the limit of {self._max_request_bytes}",
            )
        missing = [name for name in self._required_headers if name not in request.headers]
        if missing:
            raise PoisonRequest(MISSING_HEADER, f"missing header(s): {', '.join(missing)}")
        if request.body:
            _check_body(request.body)

    async def _superseded(self, msg: Msg) -> bool:
        """Whether a newer request for this subject is waiting. A direct get may be answered
        by a follower of a replicated stream that does not hold this request yet: it then shows
        an older request or none, which says nothing; only a newer one supersedes this one."""
        try:
            newest = await self._js.get_last_msg(REQUESTS_STREAM, msg.subject, direct=True)
        except NotFoundError:
            return False  # none, or a replica behind: running once too often is harmless
        except Exception as err:
            # Running once too often is harmless; skipping a needed run is not.
            log.debug("could not read the newest request on %s: %r", msg.subject, err)
            return False
        return (newest.seq or 0) > msg.metadata.sequence.stream

    async def _let_go(self, msg: Msg) -> None:
        """Ack a request that a newer one for the same object supersedes (that one runs)."""
        metrics.superseded_total.labels(self.controller).inc()
        await self._settle(msg, "ack")

    async def _acquire(self, msg: Msg, request: Request) -> _Held | None:
        """Take the object's lease, waiting while another run holds it; None when this request
        was settled instead (a newer one will run, or the queue is stopping)."""
        name = lease_name(self.controller, request.key)
        value = json.dumps(
            {"worker": self.worker_id, "sequence": request.sequence, "since": time.time()}
        ).encode()
        poll = 0.02
        poll_cap = min(0.5, self._leases.ttl / 4)
        progress_every = self._ack_wait / 3
        last_progress = time.monotonic()
        released: asyncio.Event | None = None
        try:
            while True:
                if self._stopping.is_set():
                    await self._settle(msg, "nak")
                    return None
                revision = await self._leases.try_acquire(name, value)
                if revision is not None:
                    return _Held(name, revision, value, waited=released is not None)
                if released is None:
                    metrics.lease_contention_total.labels(self.controller).inc()
                    log.debug("%s/%s: lease held, waiting", self.controller, request.key)
                if await self._superseded(msg):
                    await self._let_go(msg)
                    return None
                if time.monotonic() - last_progress >= progress_every:
                    await self._settle(msg, "in_progress")
                    last_progress = time.monotonic()
                released = self._released.setdefault(name, asyncio.Event())
                await self._wait(released, self._stopping, within=poll * (0.5 + random.random()))
                poll = min(poll * 2, poll_cap)
        finally:
            # A holder in another process never sets the event: do not keep it for ever.
            if released is not None and self._released.get(name) is released:
                del self._released[name]

    async def _run(self, msg: Msg, request: Request, held: _Held) -> None:
        assert self._handler is not None
        handler_task = asyncio.create_task(self._handler(request))
        keepalive = asyncio.create_task(self._keep_alive(msg, held, handler_task))
        labels = self.controller
        metrics.active_workers.labels(labels).inc()
        started = time.monotonic()
        outcome: Result | BaseException
        try:
            try:
                outcome = await handler_task
            except asyncio.CancelledError as cancelled:
                current = asyncio.current_task()
                if not held.lost or (current is not None and current.cancelling()):
                    raise
                outcome = cancelled
            except Exception as err:
                outcome = err
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
            metrics.active_workers.labels(labels).dec()
            elapsed = time.monotonic() - started
            metrics.reconcile_time_seconds.labels(labels).observe(elapsed)
            metrics.workqueue_work_duration_seconds.labels(labels).observe(elapsed)

        if isinstance(outcome, Result):
            await self._succeeded(msg, request, outcome)
            return
        metrics.reconcile_total.labels(labels, metrics.ERROR).inc()
        metrics.reconcile_errors_total.labels(labels).inc()
        if isinstance(outcome, asyncio.CancelledError):
            log.warning(
                "%s/%s: lease lost while the handler ran (stalled longer than the lease TTL?); "
                "handler cancelled, request retried",
                self.controller,
                request.key,
            )
            await self._settle(msg, "nak", delay=self._backoff_base)
        elif isinstance(outcome, PermanentError) and outcome.dead_letter:
            await self._dead_letter(msg, request, outcome)
        elif isinstance(outcome, PermanentError):
            log.error("%s/%s: permanent error: %s", self.controller, request.key, outcome)
            await self._settle(msg, "term")
            if self._on_permanent_error is not None:
                try:
                    await self._on_permanent_error(request, outcome)
                except Exception:
                    log.exception("on_permanent_error failed for %s", request.key)
        else:
            assert isinstance(outcome, Exception)
            transient = as_transient(outcome)
            if transient is not None:
                await self._retry_transient(msg, request, transient)
            else:
                await self._failed(msg, request, outcome)

    async def _succeeded(self, msg: Msg, request: Request, result: Result) -> None:
        labels = self.controller
        after = result.requeue_after
        if after is None:
            metrics.reconcile_total.labels(labels, metrics.SUCCESS).inc()
        else:
            kind = metrics.REQUEUE if after <= 0 else metrics.REQUEUE_AFTER
            metrics.reconcile_total.labels(labels, kind).inc()
            await self._requeue(msg, request, after)
        await self._settle(msg, "ack")

    async def _requeue(self, msg: Msg, request: Request, after: float) -> None:
        headers = _publisher_headers(request.headers)
        # A success: the next run starts with a clean slate.
        for name in (NOT_BEFORE, FAILURES, TRANSIENT_RETRIES):
            headers.pop(name, None)
        if after > 0:
            headers[NOT_BEFORE] = f"{time.time() + after:.3f}"
        # Only while this request is still the newest: a newer one runs soon anyway, and this
        # copy would replace it (and its headers) in the stream.
        headers[_EXPECTED_LAST_SUBJECT_SEQ] = str(request.sequence)
        try:
            await self._js.publish(msg.subject, request.body, headers=headers)
        except APIError as err:
            if err.err_code not in _WRONG_LAST_SEQUENCE:
                raise
            return
        metrics.workqueue_adds_total.labels(self.controller).inc()

    async def _failed(self, msg: Msg, request: Request, error: Exception) -> None:
        """A failure of the handler itself: nak with backoff (counted), or dead-letter."""
        if request.delivery >= self._max_deliveries:
            await self._dead_letter(msg, request, error)
            return
        delay = retry_delay(
            attempt=request.delivery,
            base=self._backoff_base,
            cap=self._backoff_cap,
            retry_after=None,
            jitter=random.random(),
        )
        log.warning(
            "%s/%s: attempt %d of %d failed, retrying in %.2fs: %r",
            self.controller,
            request.key,
            request.delivery,
            self._max_deliveries,
            delay,
            error,
            exc_info=error,
        )
        metrics.workqueue_retries_total.labels(self.controller).inc()
        retries_total.labels(self.controller, FAILURE).inc()
        await self._settle(msg, "nak", delay=delay)

    async def _retry_transient(self, msg: Msg, request: Request, error: TransientError) -> None:
        """A transient failure: run again after a backoff, not counted (see the module
        docstring), by publishing a marked copy of the request and acking this one."""
        retries = request.retries + 1
        delay = retry_delay(
            attempt=retries,
            base=self._backoff_base,
            cap=self._backoff_cap,
            retry_after=error.retry_after,
            jitter=random.random(),
        )
        log.warning(
            "%s/%s: transient failure %d (not counted towards %d deliveries), retrying in "
            "%.2fs: %s",
            self.controller,
            request.key,
            retries,
            self._max_deliveries,
            delay,
            error.message,
        )
        metrics.workqueue_retries_total.labels(self.controller).inc()
        retries_total.labels(self.controller, TRANSIENT).inc()
        headers = _publisher_headers(request.headers)
        headers[NOT_BEFORE] = f"{time.time() + delay:.3f}"
        headers[TRANSIENT_RETRIES] = str(retries)
        # This attempt does not count; the ones before it did.
        headers[FAILURES] = str(request.delivery - 1)
        # Only while this request is still the newest: a newer one runs soon anyway.
        headers[_EXPECTED_LAST_SUBJECT_SEQ] = str(request.sequence)
        try:
            await self._js.publish(msg.subject, request.body, headers=headers)
        except Exception as err:
            if not (isinstance(err, APIError) and err.err_code in _WRONG_LAST_SEQUENCE):
                log.warning(
                    "%s/%s: could not publish the retry (%r); the redelivery will count",
                    self.controller,
                    request.key,
                    err,
                )
                await self._settle(msg, "nak", delay=delay)
                return
        else:
            metrics.workqueue_adds_total.labels(self.controller).inc()
        await self._settle(msg, "ack")

    async def _keep_alive(self, msg: Msg, held: _Held, handler_task: asyncio.Task[Result]) -> None:
        """In-progress acks and lease refreshes while the handler runs."""
        interval = min(self._ack_wait, self._leases.ttl) / 3
        while True:
            await asyncio.sleep(interval)
            await self._settle(msg, "in_progress")
            try:
                held.revision = await self._leases.refresh(held.name, held.revision, held.value)
            except LeaseLost:
                held.lost = True
                handler_task.cancel()
                return
            except Exception as err:
                log.warning("could not refresh lease %s (retrying): %r", held.name, err)

    async def _dead_letter(self, msg: Msg, request: Request | None, error: Exception) -> None:
        meta = msg.metadata
        reason = error.reason if isinstance(error, PermanentError) else MAX_DELIVERIES_EXCEEDED
        text = error.message if isinstance(error, PermanentError | TransientError) else repr(error)
        headers = _publisher_headers(msg.headers or {})
        body = msg.data or b""
        if reason == REQUEST_TOO_LARGE:
            # Keep the evidence, not the whole payload (it may not even fit in a message).
            headers[DL_BODY_TRUNCATED] = str(len(body))
            body = body[:1024]
            if sum(len(k) + len(v) for k, v in headers.items()) > self._max_request_bytes:
                headers = {DL_BODY_TRUNCATED: headers[DL_BODY_TRUNCATED]}
        headers.update(
            {
                DL_REASON: reason,
                DL_ERROR: _header_value(text),
                DL_DELIVERIES: str(request.delivery if request else meta.num_delivered),
                DL_SUBJECT: _header_value(msg.subject),
                DL_SEQUENCE: str(meta.sequence.stream),
                DL_CONTROLLER: self.controller,
                DL_WORKER: self.worker_id,
                DL_TIME: datetime.now(UTC).isoformat(),
                # A retry after a crash between this publish and the term is not a second copy.
                "Nats-Msg-Id": f"mcop-dl.{self.controller}.{meta.sequence.stream}",
            }
        )
        if request is not None:
            target = subject(DEADLETTER, self.controller, request.key)
        else:
            target = f"{PREFIX}.{DEADLETTER}.{self.controller}._._"
        try:
            await self._js.publish(target, body, headers=headers)
        except Exception as err:
            log.error("could not dead-letter %s (will retry): %r", msg.subject, err)
            await self._settle(msg, "nak", delay=min(self._backoff_cap, 5.0))
            return
        metrics.dead_lettered_total.labels(self.controller, reason).inc()
        log.error(
            "dead-lettered request %s after %s deliveries: %s: %s",
            msg.subject,
            headers[DL_DELIVERIES],
            reason,
            text,
        )
        if request is not None and self._on_dead_letter is not None:
            try:
                await self._on_dead_letter(request, error)
            except Exception:
                log.exception("on_dead_letter failed for %s", request.key)
        await self._settle(msg, "term")

    @staticmethod
    async def _settle(
        msg: Msg, how: Literal["ack", "nak", "term", "in_progress"], *, delay: float | None = None
    ) -> None:
        """Ack, nak, term or mark in progress; a failure here only delays a redelivery, so it
        is logged, not raised."""
        try:
            if how == "ack":
                await msg.ack()
            elif how == "nak":
                await msg.nak(delay=delay)
            elif how == "term":
                await msg.term()
            else:
                await msg.in_progress()
        except nats.errors.Error as err:
            log.debug("%s of %s failed: %r", how, msg.subject, err)


def _count_header(value: str | None) -> int:
    """A non-negative count the queue wrote into a header (0 when absent or unreadable)."""
    if value is None or not value.isdigit() or len(value) > 9:
        return 0
    return int(value)


def _float_header(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
