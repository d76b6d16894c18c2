"""The queue loop: one process's share of a controller's requests, taken and run.

:class:`KeyedWorkQueue` creates the controller's durable consumer, keeps pull requests open
for up to ``concurrency`` requests at a time (fewer while the controller it yields to has a
backlog, yielding.py; pull.py says how) and hands each message to the :class:`Runner`
(runner.py: intake, lease, the handler in its consumer span, settlement). It also exports the
queue's depth, and stops gracefully. :func:`enqueue` publishes a request. The package
docstring (``__init__.py``) tells the model this implements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from memcached_operator.shared.bus.streams import LEASES_STREAM, REQUESTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.runtime import metrics, progress
from memcached_operator.shared.workqueue import intake
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.lease import Leases
from memcached_operator.shared.workqueue.pull import (
    ENDED,
    GRACE,
    NO_RESPONDERS,
    STATUS,
    PullBook,
    next_subject,
    pull_request,
)
from memcached_operator.shared.workqueue.runner import (
    FAILURE,
    TRANSIENT,
    Runner,
    retries_total,
    wait_any,
)
from memcached_operator.shared.workqueue.settings import QueueSettings
from memcached_operator.shared.workqueue.types import (
    DeadLetterCallback,
    Handler,
    PermanentErrorCallback,
    PreparingHandler,
)
from memcached_operator.shared.workqueue.yielding import YieldPolicy

log = logging.getLogger(__name__)


async def enqueue(
    js: JetStreamContext,
    *,
    controller: Controller | str,
    key: ObjectKey,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> int:
    """Publish a request to reconcile ``key``; returns its stream sequence.

    A request still waiting for the same key is replaced by this one. ``body`` is empty or a
    small JSON object.
    """
    target = Controller.of(controller)
    if body:
        intake.check_body(body)
    ack = await js.publish(
        target.request_subject(key), body, headers=dict(headers) if headers else None
    )
    metrics.workqueue_adds_total.labels(target.metrics_label).inc()
    return ack.seq


class KeyedWorkQueue:
    """One process's share of a controller's request queue; see the package docstring.

    ``start(handler)`` begins taking requests, running at most ``concurrency`` at a time;
    ``stop()`` stops taking them, lets running handlers finish and settles their messages.
    """

    def __init__(
        self,
        nc: Client,
        *,
        controller: Controller | str,
        settings: QueueSettings | None = None,
        on_dead_letter: DeadLetterCallback | None = None,
        on_permanent_error: PermanentErrorCallback | None = None,
        worker_id: str | None = None,
        yield_to: Controller | str | None = None,
    ) -> None:
        self.controller = Controller.of(controller)
        self.settings = settings = settings or QueueSettings()
        self.durable = self.controller.durable
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._label = self.controller.metrics_label
        self._nc = nc
        self._js = nc.jetstream()
        self._on_dead_letter = on_dead_letter
        self._on_permanent_error = on_permanent_error
        self._yield_to = Controller.of(yield_to).durable if yield_to else None
        self._yield = YieldPolicy(
            concurrency=settings.concurrency,
            backlog=settings.yield_backlog,
            resume=settings.yield_resume,
            pause=settings.yield_pause,
            interval=settings.yield_interval,
        )
        self._limit = settings.concurrency  # requests this queue may run at once right now

        self._leases = Leases(self._nc, self._js, ttl=settings.lease_ttl)
        self._runner: Runner | None = None
        self._sub: Subscription | None = None
        self._book = PullBook(expires=settings.pull_expires)
        self._consumer_gone = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_since = time.monotonic()  # free slots waited since then (idle metric)
        self._wake = asyncio.Event()  # a slot freed, a pull request ended, or the limit moved
        self._stopping = asyncio.Event()
        self._pull_task: asyncio.Task[None] | None = None
        self._depth_task: asyncio.Task[None] | None = None
        self._yield_task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def filter_subject(self) -> str:
        return self.controller.filter_subject

    @property
    def yielding(self) -> bool:
        """Whether this queue holds back (pauses, then runs one request at a time) because
        ``yield_to`` has a backlog."""
        return self._yield.yielding

    async def start(self, handler: Handler | PreparingHandler) -> None:
        """Create or update the controller's consumer and start taking requests."""
        if self._pull_task is not None:
            raise RuntimeError("the work queue was already started")
        await self._ensure_consumer()
        await self._bound_lease_ttl()
        self._runner = Runner(
            self._js,
            controller=self.controller,
            settings=self.settings,
            handler=handler,
            leases=self._leases,
            worker_id=self.worker_id,
            stopping=self._stopping,
            on_dead_letter=self._on_dead_letter,
            on_permanent_error=self._on_permanent_error,
        )
        self._sub = await self._nc.subscribe(self._nc.new_inbox(), cb=self._on_message)
        label = self._label
        metrics.max_concurrent_reconciles.labels(label).set(self.settings.concurrency)
        metrics.active_workers.labels(label)  # exported as 0 from the start
        for family in (
            metrics.worker_queue_duration_seconds,
            metrics.delivery_duration_seconds,
            metrics.lease_wait_seconds,
            metrics.idle_seconds_total,
        ):
            family.labels(label, self.worker_id)
        for kind in (TRANSIENT, FAILURE):
            retries_total.labels(label, kind)
        self._idle_since = time.monotonic()
        self._pull_task = asyncio.create_task(self._pull_loop(), name=f"{self.durable}-pull")
        self._depth_task = asyncio.create_task(self._depth_loop(), name=f"{self.durable}-depth")
        if self._yield_to is not None:
            self._yield_task = asyncio.create_task(
                self._yield_loop(self._yield_to), name=f"{self.durable}-yield"
            )
        log.info(
            "work queue %s started: worker %s, concurrency %d, ack wait %.1fs, lease TTL %.1fs",
            self.controller,
            self.worker_id,
            self.settings.concurrency,
            self.settings.ack_wait,
            self._leases.ttl,
        )

    async def stop(self, timeout: float = 25.0) -> None:
        """Stop taking requests, let running handlers finish (up to ``timeout``), settle them.

        Requests taken but not started (waiting for a lease) are handed back at once, and so
        are those the open pull requests still bring until they expire. Handlers still running
        at the deadline are cancelled and their requests naked, so another worker runs them.
        """
        if self._pull_task is None or self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stopping.set()
        log.info("work queue %s stopping: %d requests in flight", self.controller, len(self._tasks))
        self._wake.set()
        await asyncio.wait({self._pull_task}, timeout=max(0.0, deadline - loop.time()))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
        # Stay subscribed until the pull requests still open have expired: what they bring
        # meanwhile is handed back (_on_message), where it would otherwise wait for the ack wait.
        await asyncio.sleep(min(self._book.open_for(), max(0.0, deadline - loop.time())))
        leftovers = [*self._tasks, self._pull_task]
        leftovers += [t for t in (self._depth_task, self._yield_task) if t is not None]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=max(1, math.ceil(deadline - loop.time())))
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
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
            ack_wait=self.settings.ack_wait,
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
        if bucket_ttl and self.settings.lease_ttl > bucket_ttl:
            log.warning(
                "lease TTL %.1fs exceeds the TTL of the lease bucket (%.1fs); using the latter",
                self.settings.lease_ttl,
                bucket_ttl,
            )
            self._leases = Leases(self._nc, self._js, ttl=bucket_ttl)

    async def _pull_loop(self) -> None:
        """Keep pull requests open for the free slots (pull.py) until the queue stops."""
        subject = next_subject(REQUESTS_STREAM, self.durable)
        assert self._sub is not None
        inbox = self._sub.subject
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            if self._consumer_gone:
                failures += 1
                # One line per streak of failures, not one per attempt (a bus restart must not
                # flood the log).
                if failures == 1:
                    log.warning("the consumer of %s is gone; creating it again", self.controller)
                await wait_any(self._stopping, within=min(5.0, 0.25 * 2**failures))
                with contextlib.suppress(Exception):
                    await self._ensure_consumer()
                self._consumer_gone = False
                continue
            batch = self._book.to_ask(self._limit - len(self._tasks))
            if batch:
                try:
                    await self._nc.publish(
                        subject,
                        pull_request(batch, expires=self.settings.pull_expires),
                        reply=inbox,
                    )
                except Exception as err:
                    failures += 1
                    if failures == 1:
                        log.warning("asking for requests of %s failed: %r", self.controller, err)
                    await wait_any(self._stopping, within=min(5.0, 0.25 * 2**failures))
                    continue
                self._book.sent(batch)
            # Woken when a slot frees, a pull request ends or the limit moves; at the latest
            # when the open pull requests would all have expired.
            await wait_any(self._wake, self._stopping, within=self.settings.pull_expires + GRACE)

    async def _on_message(self, msg: Msg) -> None:
        """A request for this queue, or the status that ended one of its pull requests."""
        if not msg.reply:  # not a stream message: a status of a pull request
            status = (msg.headers or {}).get(STATUS, "")
            if status in ENDED:
                self._book.ended(msg.headers or {})
            elif status == NO_RESPONDERS:
                self._book.reset()
                self._consumer_gone = True
            self._wake.set()
            return
        self._book.delivered()
        if self._stopping.is_set():
            # Back to the stream, after the pull requests still open here have expired.
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.settings.pull_expires + GRACE)
            return
        assert self._runner is not None
        progress.TRACKER.progressed()  # liveness: requests are being taken
        self._count_idle()
        task = asyncio.create_task(self._runner.process(msg))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _count_idle(self) -> None:
        """Count the slot-seconds the free slots waited since the last change of running work."""
        now = time.monotonic()
        free = max(0, self._limit - len(self._tasks))
        metrics.idle_seconds_total.labels(self._label, self.worker_id).inc(
            free * (now - self._idle_since)
        )
        self._idle_since = now

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._count_idle()
        self._tasks.discard(task)
        self._wake.set()
        progress.TRACKER.progressed()

    async def _depth_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                info = await self._js.consumer_info(REQUESTS_STREAM, self.durable)
                depth = (info.num_pending or 0) + (info.num_ack_pending or 0)
                metrics.workqueue_depth.labels(self._label).set(depth)
                # Liveness: requests no worker has taken yet are work waiting.
                progress.TRACKER.waiting(self.durable, info.num_pending or 0)
            except Exception as err:
                log.debug("could not read the depth of %s: %r", self.durable, err)
            await wait_any(self._stopping, within=self.settings.depth_interval)

    async def _yield_loop(self, durable: str) -> None:
        """Poll the backlog of the controller this one yields to and apply the yield policy's
        limit (yielding.py)."""
        while not self._stopping.is_set():
            backlog: int | None
            error: Exception | None = None
            try:
                backlog = (await self._js.consumer_info(REQUESTS_STREAM, durable)).num_pending or 0
            except NotFoundError:
                backlog = 0  # no worker of that controller has started yet: nothing waits
            except Exception as err:
                backlog = None
                error = err
            step = self._yield.observe(backlog)
            if step.warn:  # one line per streak (a NATS restart, a missing permission)
                log.warning("cannot read the backlog of %s, not yielding: %r", durable, error)
            if step.yielding_changed:
                metrics.workqueue_yielding.labels(self._label).set(int(step.yielding))
            if step.limit_changed:
                self._count_idle()
                self._limit = step.limit
                log.info(
                    "%s: %d at a time (%d requests of %s waiting)",
                    self.controller,
                    step.limit,
                    backlog or 0,
                    durable,
                )
                self._wake.set()  # let the pull loop recompute its free slots
            await wait_any(self._stopping, within=step.wait)
