"""One delivered request, from intake to settlement.

A :class:`Runner` turns a message into a :class:`Request` (intake.py; poison goes to the
dead-letter stream at once), waits for and takes the object's lease (lease.py; while it waits
it keeps the message alive and lets go of it when a newer request for the object arrives), runs
the handler inside its consumer span (tracing.py) while refreshing the lease and sending
in-progress acks (keepalive.py), and carries out what the result switch decides (settle.py):
ack, a marked copy, nak, term, or the dead-letter record (deadletter.py). The queue loop
(queue.py) hands it the messages it fetches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from datetime import UTC, datetime
from typing import Literal

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from prometheus_client import Counter

from memcached_operator.shared.bus.leaderget import last_sequence
from memcached_operator.shared.bus.streams import REQUESTS_STREAM
from memcached_operator.shared.runtime import metrics
from memcached_operator.shared.runtime.errors import PermanentError, as_transient
from memcached_operator.shared.workqueue import deadletter, intake
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.deadletter import MAX_DELIVERIES_EXCEEDED
from memcached_operator.shared.workqueue.keepalive import keep_alive
from memcached_operator.shared.workqueue.lease import (
    WRONG_LAST_SEQUENCE,
    Held,
    LeaseStore,
    Overtaken,
    WaitSchedule,
)
from memcached_operator.shared.workqueue.settings import QueueSettings
from memcached_operator.shared.workqueue.settle import (
    DeadLetter,
    LeaseLostRetry,
    RetryFailure,
    Settlement,
    SettlePolicy,
    Succeed,
    Terminate,
    requeue_headers,
    retry_headers,
)
from memcached_operator.shared.workqueue.tracing import traced
from memcached_operator.shared.workqueue.types import (
    DeadLetterCallback,
    Handler,
    PermanentErrorCallback,
    PoisonRequest,
    PreparingHandler,
    Request,
    Result,
)

# The queue's logger: these lines are part of its story in the logs.
log = logging.getLogger("memcached_operator.shared.workqueue.queue")

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

How = Literal["ack", "nak", "term", "in_progress"]


async def superseded(js: JetStreamContext, msg: Msg) -> bool:
    """Whether a newer request for the subject of ``msg`` (a delivered, unsettled request) is
    waiting or has run already.

    A direct get may be answered by a follower of a replicated stream that does not hold this
    request yet: it then shows an older request or none, which says nothing; only a newer one
    supersedes this one. In those two cases the leader is asked. If the leader holds no request
    for the subject, this one is gone from the stream although nobody settled it: a newer one
    replaced it (one per subject) and was acked after its run, which started after this request
    was published (WorkQueue retention removes what is acked). Running this one after that
    would be a run out of order, so it is let go too.
    """
    own = msg.metadata.sequence.stream
    try:
        try:
            raw = await js.get_last_msg(REQUESTS_STREAM, msg.subject, direct=True)
            newest = raw.seq or 0
        except NotFoundError:
            newest = 0
        if newest >= own:
            return newest > own
        newest = await last_sequence(js, REQUESTS_STREAM, msg.subject)
    except Exception as err:
        # Running once too often is harmless; skipping a needed run is not.
        log.debug("could not read the newest request on %s: %r", msg.subject, err)
        return False
    return newest == 0 or newest > own


class Runner:
    """Runs the requests one queue took, each at most once at a time per object."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        controller: Controller,
        settings: QueueSettings,
        handler: Handler | PreparingHandler,
        leases: LeaseStore,
        worker_id: str,
        stopping: asyncio.Event,
        on_dead_letter: DeadLetterCallback | None = None,
        on_permanent_error: PermanentErrorCallback | None = None,
    ) -> None:
        self.controller = controller
        self.settings = settings
        self.worker_id = worker_id
        self._js = js
        self._handler = handler
        self._leases = leases
        self._stopping = stopping
        self._on_dead_letter = on_dead_letter
        self._on_permanent_error = on_permanent_error
        self._label = controller.metrics_label
        self._policy = SettlePolicy(
            max_deliveries=settings.max_deliveries,
            backoff_base=settings.backoff_base,
            backoff_cap=settings.backoff_cap,
            jitter=random.random,
        )
        # Lease name -> an event set when a run of this process releases it.
        self._released: dict[str, asyncio.Event] = {}

    async def process(self, msg: Msg) -> None:
        """Handle one fetched message to its settlement (on cancellation: nak it at once)."""
        try:
            await self._process_message(msg)
        except asyncio.CancelledError:
            # stop() ran out of time: hand the request to another worker now.
            await _settle(msg, "nak")
            raise
        except Exception:
            log.exception("unexpected failure handling %s; retrying it shortly", msg.subject)
            await _settle(msg, "nak", delay=1.0)

    async def _process_message(self, msg: Msg) -> None:
        meta = msg.metadata
        headers: dict[str, str] = dict(msg.headers or {})
        try:
            key = intake.parse_key(self.controller, msg.subject)
        except PoisonRequest as error:
            await self._dead_letter(msg, None, error)
            return
        request = intake.request_of(
            self.controller,
            key=key,
            headers=headers,
            body=msg.data or b"",
            num_delivered=meta.num_delivered,
            published_at=meta.timestamp,
            sequence=meta.sequence.stream,
        )
        try:
            intake.check_content(
                request,
                max_request_bytes=self.settings.max_request_bytes,
                required_headers=self.settings.required_headers,
            )
        except PoisonRequest as error:
            # The key is known, so the callback can tell the object's owner what went wrong.
            await self._dead_letter(msg, request, error)
            return
        if request.delivery > self.settings.max_deliveries:
            crashed = PermanentError(
                MAX_DELIVERIES_EXCEEDED,
                f"{request.delivery - 1} attempts failed or did not complete "
                "(did its handling crash the worker?)",
            )
            await self._dead_letter(msg, request, crashed)
            return
        not_before = intake.not_before(headers)
        if not_before is not None and meta.num_delivered == 1:
            await _settle(msg, "nak", delay=max(0.0, not_before - time.time()))
            return
        if self._stopping.is_set():
            await _settle(msg, "nak")
            return
        queued_since = max(request.published_at.timestamp(), not_before or 0.0)
        delivered = time.time()
        metrics.delivery_duration_seconds.labels(self._label, self.worker_id).observe(
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
            await self._carry_out(msg, request, self._policy.transient(request, transient))
            return
        metrics.lease_wait_seconds.labels(self._label, self.worker_id).observe(
            time.time() - delivered
        )
        if held is None:
            return
        try:
            if held.waited and await superseded(self._js, msg):
                await self._let_go(msg)
                return
            queued = max(0.0, time.time() - queued_since)
            metrics.workqueue_queue_duration_seconds.labels(self._label).observe(queued)
            metrics.worker_queue_duration_seconds.labels(self._label, self.worker_id).observe(
                queued
            )
            await self._run(msg, request, held)
        finally:
            if not held.lost:
                with contextlib.suppress(Exception):
                    await self._leases.release(held.name, held.revision, ran=request.sequence)
            waiting = self._released.pop(held.name, None)
            if waiting is not None:
                waiting.set()

    async def _let_go(self, msg: Msg) -> None:
        """Ack a request that a newer one for the same object supersedes (that one runs)."""
        metrics.superseded_total.labels(self._label).inc()
        await _settle(msg, "ack")

    async def _acquire(self, msg: Msg, request: Request) -> Held | None:
        """Take the object's lease, waiting while another run holds it; None when this request
        was settled instead (a newer one will run or has run, or the queue is stopping)."""
        name = self.controller.lease_name(request.key)
        value = json.dumps(
            {"worker": self.worker_id, "sequence": request.sequence, "since": time.time()}
        ).encode()
        schedule = WaitSchedule(ttl=self._leases.ttl, ack_wait=self.settings.ack_wait)
        released: asyncio.Event | None = None
        try:
            while True:
                if self._stopping.is_set():
                    await _settle(msg, "nak")
                    return None
                revision = await self._leases.try_acquire(name, value, sequence=request.sequence)
                if isinstance(revision, Overtaken):
                    # A newer request of the object ran since this one was published.
                    await self._let_go(msg)
                    return None
                if revision is not None:
                    return Held(name, revision, value, waited=released is not None)
                if released is None:
                    metrics.lease_contention_total.labels(self._label).inc()
                    log.debug("%s/%s: lease held, waiting", self.controller, request.key)
                if await superseded(self._js, msg):
                    await self._let_go(msg)
                    return None
                if schedule.progress_due():
                    await _settle(msg, "in_progress")
                # Woken at once when the holder is in this process.
                released = self._released.setdefault(name, asyncio.Event())
                await wait_any(released, self._stopping, within=schedule.next_poll())
        finally:
            # A holder in another process never sets the event: do not keep it for ever.
            if released is not None and self._released.get(name) is released:
                del self._released[name]

    async def _run(self, msg: Msg, request: Request, held: Held) -> None:
        handler_task = asyncio.create_task(
            traced(self._handler, request, controller=self.controller, worker=self.worker_id)
        )
        keepalive = asyncio.create_task(
            keep_alive(
                msg, held, handler_task, leases=self._leases, ack_wait=self.settings.ack_wait
            )
        )
        label = self._label
        metrics.active_workers.labels(label).inc()
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
            metrics.active_workers.labels(label).dec()
            elapsed = time.monotonic() - started
            metrics.reconcile_time_seconds.labels(label).observe(elapsed)
            metrics.workqueue_work_duration_seconds.labels(label).observe(elapsed)
        settlement = self._policy.settle(request, outcome, lease_lost=held.lost)
        if isinstance(settlement, Succeed):
            metrics.reconcile_total.labels(label, settlement.result).inc()
        else:
            metrics.reconcile_total.labels(label, metrics.ERROR).inc()
            metrics.reconcile_errors_total.labels(label).inc()
        await self._carry_out(msg, request, settlement)

    async def _carry_out(
        self,
        msg: Msg,
        request: Request,
        settlement: Settlement,
    ) -> None:
        """Settle the message as decided (settle.py), with the copies it publishes."""
        key, label = request.key, self._label
        if isinstance(settlement, Succeed):
            if settlement.requeue_after is not None:
                headers = requeue_headers(request, settlement.requeue_after, now=time.time())
                # NATS failing now (a node of the stream gone) is not the run's fault.
                await self._copy_or_nak(
                    msg, request, headers, what="requeue", delay=settlement.requeue_after
                )
                return
            await _settle(msg, "ack")
        elif isinstance(settlement, LeaseLostRetry):
            log.warning(
                "%s/%s: lease lost while the handler ran (stalled longer than the lease TTL?); "
                "handler cancelled, request retried",
                self.controller,
                key,
            )
            await _settle(msg, "nak", delay=settlement.delay)
        elif isinstance(settlement, DeadLetter):
            await self._dead_letter(msg, request, settlement.error)
        elif isinstance(settlement, Terminate):
            log.error("%s/%s: permanent error: %s", self.controller, key, settlement.error)
            await _settle(msg, "term")
            if self._on_permanent_error is not None:
                try:
                    await self._on_permanent_error(request, settlement.error)
                except Exception:
                    log.exception("on_permanent_error failed for %s", key)
        elif isinstance(settlement, RetryFailure):
            log.warning(
                "%s/%s: attempt %d of %d failed, retrying in %.2fs: %r",
                self.controller,
                key,
                request.delivery,
                self.settings.max_deliveries,
                settlement.delay,
                settlement.error,
                exc_info=settlement.error,
            )
            metrics.workqueue_retries_total.labels(label).inc()
            retries_total.labels(label, FAILURE).inc()
            await _settle(msg, "nak", delay=settlement.delay)
        else:
            log.warning(
                "%s/%s: transient failure %d (not counted towards %d deliveries), retrying in "
                "%.2fs: %s",
                self.controller,
                key,
                settlement.retries,
                self.settings.max_deliveries,
                settlement.delay,
                settlement.error.message,
            )
            metrics.workqueue_retries_total.labels(label).inc()
            retries_total.labels(label, TRANSIENT).inc()
            headers = retry_headers(request, settlement, now=time.time())
            await self._copy_or_nak(
                msg,
                request,
                headers,
                what="retry",
                delay=self._policy.uncopied(request, settlement),
            )

    async def _copy_or_nak(
        self, msg: Msg, request: Request, headers: dict[str, str], *, what: str, delay: float
    ) -> None:
        """Ack once a copy carrying `headers` is published; when NATS refuses the copy, nak
        for redelivery in `delay` seconds instead (that redelivery counts as a delivery)."""
        try:
            await self._publish_copy(msg, request, headers)
        except Exception as err:
            log.warning(
                "%s/%s: could not publish the %s (%r); redelivered in %.2fs instead "
                "(the redelivery will count)",
                self.controller,
                request.key,
                what,
                err,
                delay,
            )
            await _settle(msg, "nak", delay=delay)
            return
        await _settle(msg, "ack")

    async def _publish_copy(self, msg: Msg, request: Request, headers: dict[str, str]) -> None:
        """Publish a copy of the request, unless a newer one waits (then that one runs)."""
        try:
            await self._js.publish(msg.subject, request.body, headers=headers)
        except APIError as err:
            if err.err_code not in WRONG_LAST_SEQUENCE:
                raise
            return
        metrics.workqueue_adds_total.labels(self._label).inc()

    async def _dead_letter(self, msg: Msg, request: Request | None, error: Exception) -> None:
        meta = msg.metadata
        record = deadletter.dead_letter(
            controller=self.controller,
            key=request.key if request is not None else None,
            error=error,
            subject=msg.subject,
            headers=msg.headers or {},
            body=msg.data or b"",
            deliveries=request.delivery if request is not None else meta.num_delivered,
            sequence=meta.sequence.stream,
            worker=self.worker_id,
            max_request_bytes=self.settings.max_request_bytes,
            now=datetime.now(UTC),
        )
        try:
            await self._js.publish(record.subject, record.body, headers=record.headers)
        except Exception as err:
            log.error("could not dead-letter %s (will retry): %r", msg.subject, err)
            await _settle(msg, "nak", delay=min(self.settings.backoff_cap, 5.0))
            return
        metrics.dead_lettered_total.labels(self._label, record.reason).inc()
        log.error(
            "dead-lettered request %s after %s deliveries: %s: %s",
            msg.subject,
            record.headers[deadletter.DL_DELIVERIES],
            record.reason,
            record.text,
        )
        if request is not None and self._on_dead_letter is not None:
            try:
                await self._on_dead_letter(request, error)
            except Exception:
                log.exception("on_dead_letter failed for %s", request.key)
        await _settle(msg, "term")


async def _settle(msg: Msg, how: How, *, delay: float | None = None) -> None:
    """Ack, nak, term or mark in progress; a failure here only delays a redelivery, so it is
    logged, not raised."""
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


async def wait_any(*events: asyncio.Event, within: float | None) -> None:
    """Until one of ``events`` is set or ``within`` seconds pass."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
