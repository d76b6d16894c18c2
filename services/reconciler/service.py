"""`memcached-operator reconciler`: one worker process of the reconciler fleet.

Start as many as you like; they share the requests like a consumer group (see
shared/workqueue/ for how one object is never reconciled twice at once). Each process runs
up to --concurrency reconciles at a time. On SIGTERM it stops taking requests, finishes the
ones in flight and exits within the 30 s grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging

from memcached_operator.reconciler.reconcile import CONTROLLER, MemcachedReconciler, publish_outcome
from memcached_operator.reconciler.settings import ReconcilerSettings
from memcached_operator.reconciler.verify import ForgedMessage
from memcached_operator.shared.bus.stream_admin import ALL_STREAMS
from memcached_operator.shared.events.outcomes import DEAD_LETTERED, Outcome
from memcached_operator.shared.kube.client import MEMCACHED
from memcached_operator.shared.runtime import metrics, settings
from memcached_operator.shared.runtime import process as runtime
from memcached_operator.shared.runtime.errors import PermanentError
from memcached_operator.shared.workqueue.options import queue_from_args
from memcached_operator.shared.workqueue.types import Request

log = logging.getLogger("memcached_operator.reconciler")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_flags(parser, ReconcilerSettings)


def run(args: argparse.Namespace) -> int:
    config = settings.from_args(ReconcilerSettings, args)
    return runtime.run("reconciler", lambda stop: serve(config, stop))


async def serve(args: ReconcilerSettings, stop: asyncio.Event) -> None:
    conn = await runtime.Connections.open("reconciler", args, streams=ALL_STREAMS, stop=stop)
    kube, js = conn.kube, conn.js

    async def on_dead_letter(request: Request, error: Exception) -> None:
        if isinstance(error, ForgedMessage):
            return  # the message was at fault, not the CR: nothing to say on the CR
        cr = await kube.get(MEMCACHED, request.key.namespace, request.key.name)
        meta = (cr or {}).get("metadata") or {}
        if not meta.get("uid"):
            return
        # The status service turns this into Degraded=True, reason DeadLettered, for this
        # generation; the watcher's resync then leaves the CR alone until its spec changes.
        cause = error.reason if isinstance(error, PermanentError) else type(error).__name__
        text = error.message if isinstance(error, PermanentError) else str(error)
        await publish_outcome(
            js,
            Outcome(
                key=f"{request.key.namespace}/{request.key.name}",
                uid=str(meta["uid"]),
                generation=int(meta.get("generation") or 0),
                result="deadlettered",
                reason=DEAD_LETTERED,
                message=(
                    f"gave up after {request.delivery} "
                    f"{'delivery' if request.delivery == 1 else 'deliveries'} ({cause}: {text}); "
                    "not retried until the spec changes"
                ),
                time=dt.datetime.now(dt.UTC),
            ),
        )

    queue = queue_from_args(conn, args, controller=CONTROLLER, on_dead_letter=on_dead_letter)
    metrics.init_controller(CONTROLLER.metrics_label)
    await queue.start(
        MemcachedReconciler(
            kube, js, worker=conn.worker, progress_deadline_seconds=args.progress_deadline
        )
    )
    log.info("reconciler started", extra={"worker": conn.worker, "concurrency": args.concurrency})
    try:
        await stop.wait()
        log.info("stopping: finishing in-flight reconciles")
    finally:
        await queue.stop(timeout=25)
        await conn.close()
        log.info("reconciler stopped")
