"""The queue loop: one process's share of a controller's requests, fetched and run.

:class:`KeyedWorkQueue` creates the controller's durable consumer, fetches up to
``concurrency`` requests at a time (fewer while the controller it yields to has a backlog,
yielding.py) and hands each message to the :class:`Runner` (runner.py: intake, lease, the
handler in its consumer span, settlement). It also exports the queue's depth, and stops
gracefully. :func:`enqueue` publishes a request. The package docstring (``__init__.py``) tells
the model this implements.
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
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from memcached_operator.shared.bus.streams import LEASES_STREAM, REQUESTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.runtime import metrics, progress
from memcached_operator.shared.workqueue import intake
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.lease import Leases, LeaseStore
from memcached_operator.shared.workqueue.process_lease import ProcessLeases
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

        self._leases: LeaseStore = (
            Leases(self._nc, self._js, ttl=settings.lease_ttl)
            if self.controller.leased
            else ProcessLeases(ttl=settings.lease_ttl)
        )
        self._runner: Runner | None = None
        self._psub: JetStreamContext.PullSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._fetch_task: asyncio.Task[None] | None = None
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
        if self._fetch_task is not None:
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
        self._psub = await self._js.pull_subscribe_bind(
            durable=self.durable, stream=REQUESTS_STREAM
        )
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
        self._fetch_task = asyncio.create_task(self._fetch_loop(), name=f"{self.durable}-fetch")
        self._depth_task = asyncio.create_task(self._depth_loop(), name=f"{self.durable}-depth")
        if self._yield_to is not None:
            self._yield_task = asyncio.create_task(
                self._yield_loop(self._yield_to), name=f"{self.durable}-yield"
            )
        log.info(
            "work queue %s started: worker %s, concurrency %d, ack wait %.1fs, lease TTL %.1fs, "
            "runs of one object kept apart in the %s",
            self.controller,
            self.worker_id,
            self.settings.concurrency,
            self.settings.ack_wait,
            self._leases.ttl,
            self.controller.exclusive,
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
        if not isinstance(self._leases, Leases):
            return  # not in the bucket
        info = await self._js.stream_info(LEASES_STREAM)
        bucket_ttl = info.config.max_age or 0.0
        if bucket_ttl and self.settings.lease_ttl > bucket_ttl:
            log.warning(
                "lease TTL %.1fs exceeds the TTL of the lease bucket (%.1fs); using the latter",
                self.settings.lease_ttl,
                bucket_ttl,
            )
            self._leases = Leases(self._nc, self._js, ttl=bucket_ttl)

    async def _fetch_loop(self) -> None:
        assert self._psub is not None and self._runner is not None
        failures = 0
        while not self._stopping.is_set():
            free = self._limit - len(self._tasks)
            if free <= 0:
                self._slot_freed.clear()
                await wait_any(self._slot_freed, self._stopping, within=None)
                continue
            fetching = time.monotonic()
            try:
                msgs = await self._psub.fetch(batch=free, timeout=self.settings.fetch_timeout)
            except TimeoutError:
                self._idle(free, since=fetching)
                continue  # nothing to do (nats.errors.TimeoutError is one of these)
            except Exception as err:
                failures += 1
                # One line per streak of failures, not one per attempt (a bus restart must not
                # flood the log).
                if failures == 1:
                    log.warning("fetching requests of %s failed: %r", self.controller, err)
                await wait_any(self._stopping, within=min(5.0, 0.25 * 2**failures))
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
                task = asyncio.create_task(self._runner.process(msg))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    def _idle(self, free: int, *, since: float) -> None:
        """Count the slot-seconds ``free`` slots waited in one fetch."""
        waited = time.monotonic() - since
        metrics.idle_seconds_total.labels(self._label, self.worker_id).inc(free * waited)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()
        progress.TRACKER.progressed()

    async def _depth_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                info = await self._js.consumer_info(REQUESTS_STREAM, self.durable)
                depth = (info.num_pending or 0) + (info.num_ack_pending or 0)
                metrics.workqueue_depth.labels(self._label).set(depth)
                # Liveness: requests no worker has fetched yet are work waiting.
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
                self._limit = step.limit
                log.info(
                    "%s: %d at a time (%d requests of %s waiting)",
                    self.controller,
                    step.limit,
                    backlog or 0,
                    durable,
                )
                self._slot_freed.set()  # let the fetch loop recompute its free slots
            await wait_any(self._stopping, within=step.wait)
