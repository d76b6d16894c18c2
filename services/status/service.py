"""`memcached-operator status`: folds outcomes, Deployments and Pods into each CR's status.

Status requests (from the reconciler after every outcome, and from the watcher when an owned
Deployment or Pod changes) go through the same keyed work queue as reconciles, so several
status replicas never write one CR at once and pending refreshes of a CR coalesce. A refresh
reads the CR, its Deployment and pods, and the CR's newest outcome (a direct get by subject on
the events stream), folds them (conditions.py), and writes the status subresource only when
something a reader can see changed — and at most once per --min-interval per CR, which a
burst of pod changes during a rollout would otherwise turn into a write each. Condition
transitions become Kubernetes Events.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import time
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from services.reconciler.desired import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, label_value
from services.reconciler.service import add_queue_arguments
from services.status.conditions import fold_status, status_changed, transitions
from services.status.recorder import EventRecorder
from shared import natsconn, runtime, subjects, telemetry
from shared.http import HealthServer
from shared.kube import DEPLOYMENT, MEMCACHED, POD, KubeClient
from shared.outcomes import Outcome
from shared.streams import EVENTS_STREAM, REQUESTS_STREAM, ensure_streams
from shared.workqueue import ORIGIN, KeyedWorkQueue, Request, Result

log = logging.getLogger("memcached_operator.status")
tracer = trace.get_tracer("memcached-operator.status")

CONTROLLER = "status"
STATUS_WRITES = Counter("mcop_status_writes_total", "Status refreshes by what they did", ["result"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runtime.add_common_arguments(parser, health_port=8083)
    add_queue_arguments(parser, prefix="STATUS")
    parser.add_argument(
        "--min-interval",
        type=float,
        default=float(runtime.env("STATUS_MIN_INTERVAL", "1.0")),
        help="seconds between two status writes of one CR (env STATUS_MIN_INTERVAL)",
    )


def run(args: argparse.Namespace) -> int:
    return runtime.run("status", lambda stop: serve(args, stop))


async def last_outcome(js: JetStreamContext, key: subjects.ObjectKey) -> Outcome | None:
    subject = subjects.subject(subjects.OUTCOMES, "reconcile", key)
    try:
        msg = await js.get_last_msg(EVENTS_STREAM, subject, direct=True)
    except NotFoundError:
        return None
    try:
        return Outcome.from_json(msg.data or b"")
    except ValueError as err:
        log.warning("ignoring a malformed outcome on %s: %s", subject, err)
        return None


class StatusRefresher:
    """The status handler: one CR's status brought up to date per call."""

    def __init__(
        self,
        kube: KubeClient,
        js: JetStreamContext,
        *,
        recorder: EventRecorder,
        min_interval: float,
    ) -> None:
        self.kube = kube
        self.js = js
        self.recorder = recorder
        self.min_interval = min_interval
        self._last_write: dict[subjects.ObjectKey, float] = {}

    async def __call__(self, request: Request) -> Result:
        key = request.key
        with tracer.start_as_current_span(
            f"process {subjects.PREFIX}.{subjects.REQUESTS}.{CONTROLLER}",
            context=telemetry.extract(request.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": subjects.subject(subjects.REQUESTS, CONTROLLER, key),
                "messaging.consumer.group.name": f"mcop-{CONTROLLER}",
                "k8s.object.key": str(key),
            },
        ):
            return await self._refresh(key)

    async def _refresh(self, key: subjects.ObjectKey) -> Result:
        cr = await self.kube.get(MEMCACHED, key.namespace, key.name)
        if cr is None:
            self.recorder.forget(str(key))
            self._last_write.pop(key, None)
            return Result()
        since = time.monotonic() - self._last_write.get(key, float("-inf"))
        if since < self.min_interval:
            return Result(requeue_after=self.min_interval - since)
        selector = ",".join(
            [f"{LABEL_INSTANCE}={label_value(key.name)}", f"{LABEL_MANAGED_BY}={MANAGED_BY}"]
        )
        deployment, (pods, _), outcome = await asyncio.gather(
            self.kube.get(DEPLOYMENT, key.namespace, key.name),
            self.kube.list(POD, namespace=key.namespace, label_selector=selector),
            last_outcome(self.js, key),
        )
        old: dict[str, Any] | None = cr.get("status")
        new = fold_status(
            cr=cr, deployment=deployment, pods=pods, outcome=outcome, now=dt.datetime.now(dt.UTC)
        )
        if not status_changed(old, new):
            STATUS_WRITES.labels("skipped").inc()
            return Result()
        await self.kube.patch_status(MEMCACHED, key.namespace, key.name, {"status": new})
        self._last_write[key] = time.monotonic()
        STATUS_WRITES.labels("written").inc()
        changed = transitions(old, new)
        if changed:
            await self.recorder.record(cr, changed)
        return Result()


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    worker = runtime.worker_id("status")
    nc = await natsconn.connect(worker, args.nats_url)
    js = nc.jetstream()
    kube = await KubeClient.connect(args.kubeconfig)
    while True:
        try:
            await ensure_streams(js, replicas=args.stream_replicas, lease_ttl=args.lease_ttl)
            break
        except (nats.errors.Error, TimeoutError) as err:
            log.warning("creating streams failed (%s); retrying", err)
            await asyncio.sleep(1)
    queue = KeyedWorkQueue(
        nc,
        controller=CONTROLLER,
        concurrency=args.concurrency,
        ack_wait=args.ack_wait,
        lease_ttl=args.lease_ttl,
        max_deliveries=args.max_deliveries,
        backoff_cap=args.backoff_cap,
        required_headers=(ORIGIN,),
        worker_id=worker,
    )

    async def nats_ready() -> bool:
        return bool(nc.is_connected)

    async def api_ready() -> bool:
        await kube.request("GET", "/readyz", resource="readyz", timeout=2)
        return True

    async def streams_ready() -> bool:
        await js.stream_info(REQUESTS_STREAM)
        await js.stream_info(EVENTS_STREAM)
        return True

    health = HealthServer(
        port=args.health_port,
        checks={"nats": nats_ready, "apiserver": api_ready, "streams": streams_ready},
    )
    await health.start()
    refresher = StatusRefresher(
        kube, js, recorder=EventRecorder(kube, instance=worker), min_interval=args.min_interval
    )
    await queue.start(refresher)
    log.info("status service started", extra={"worker": worker})
    try:
        await stop.wait()
    finally:
        await queue.stop(timeout=25)
        await health.stop()
        await kube.close()
        await nc.drain()
        log.info("status service stopped")
