"""`memcached-operator watcher`: the only part of the system that watches the API server.

It runs one informer per watched kind — Memcached (all namespaces or the given ones), and
the Deployments, Pods, PodDisruptionBudgets and Services labelled as managed by it —
publishes every change to JetStream with the requests each controller's declarations route it
to (emitter.py; the package root, memcached_operator.routes, hands it those), and every resync
period re-requests reconciliation of every CR it knows (as the reference operator's
RequeueAfter does), except those whose requests were dead-lettered at their current generation
(resync.py). Several replicas may run at once: the stream de-duplicates what they publish.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from memcached_operator.shared.api.contract import LABEL_MANAGED_BY, MANAGED_BY, RECONCILE
from memcached_operator.shared.bus.routing import Router
from memcached_operator.shared.bus.streams import EVENTS_STREAM, REQUESTS_STREAM
from memcached_operator.shared.kube.client import DEPLOYMENT, MEMCACHED, PDB, POD, SERVICE, Resource
from memcached_operator.shared.runtime import metrics, settings
from memcached_operator.shared.runtime import process as runtime
from memcached_operator.shared.workqueue.types import ORIGIN
from memcached_operator.watcher.emitter import Emitter
from memcached_operator.watcher.informer import Informer
from memcached_operator.watcher.known import load_known
from memcached_operator.watcher.owners import Kind
from memcached_operator.watcher.publisher import DUPLICATES_DROPPED, REQUESTS_PUBLISHED, Publisher
from memcached_operator.watcher.resync import DeadLettered
from memcached_operator.watcher.settings import WatcherSettings

log = logging.getLogger("memcached_operator.watcher")

MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
WATCHED: tuple[tuple[Kind, Resource, str | None], ...] = (
    (Kind("memcached", owned=False), MEMCACHED, None),
    (Kind("deployment", owned=True), DEPLOYMENT, MANAGED_SELECTOR),
    (Kind("pod", owned=True), POD, MANAGED_SELECTOR),
    # Owned beside the Deployment: their drift and deletion are reconciled the same way.
    (Kind("pdb", owned=True), PDB, MANAGED_SELECTOR),
    (Kind("service", owned=True), SERVICE, MANAGED_SELECTOR),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_flags(parser, WatcherSettings)


def run(args: argparse.Namespace, router: Router) -> int:
    """Run the watcher, routing changes by ``router`` (memcached_operator.routes builds it)."""
    config = settings.from_args(WatcherSettings, args)
    return runtime.run("watcher", lambda stop: serve(config, stop, router))


async def _resync(
    publisher: Publisher, informers: list[Informer], period: float, skip: DeadLettered
) -> None:
    while True:
        await asyncio.sleep(period)
        count = 0
        for informer in informers:
            if informer.resource is MEMCACHED:
                for key in list(informer.known):
                    if key in skip:
                        continue  # dead-lettered at its generation: see resync.py
                    await publisher.request(RECONCILE, key, {ORIGIN: "watcher:resync"})
                    count += 1
        await publisher.flush()
        log.info("resync requested", extra={"count": count, "skipped": len(skip)})


async def serve(args: WatcherSettings, stop: asyncio.Event, router: Router) -> None:
    conn = await runtime.Connections.open(
        "watcher",
        args,
        streams=(EVENTS_STREAM, REQUESTS_STREAM),
        stop=stop,
    )
    js, kube = conn.js, conn.kube
    namespaces: list[str | None] = [*args.namespaces] or [None]
    # Series exported at 0 from the start, so that rates have something to work on.
    for kind, _, _ in WATCHED:
        DUPLICATES_DROPPED.labels(kind.name)
    for controller in router.controllers:
        REQUESTS_PUBLISHED.labels(controller)
        metrics.workqueue_adds_total.labels(controller)

    publisher = Publisher(js, nc=conn.nc, worker=conn.worker)
    emitter = Emitter(publisher, router)
    skip = DeadLettered()
    informers: list[Informer] = []
    for kind, resource, selector in WATCHED:
        for namespace in namespaces:
            known = await load_known(js, kind.name, namespace=namespace)

            async def emit(change, obj, before, kind=kind):  # type: ignore[no-untyped-def]
                await emitter.emit(kind, change, obj, before)

            async def refuse(line, who, kind=kind):  # type: ignore[no-untyped-def]
                await emitter.oversized(kind, line, who)

            informers.append(
                Informer(
                    kube,
                    resource,
                    emit=emit,
                    known=known,
                    namespace=namespace,
                    label_selector=selector,
                    refuse=refuse,
                    max_line=args.max_watch_line,
                    max_page=args.max_list_page,
                    observe=(
                        (lambda obj, deleted: skip.observe(obj, deleted=deleted))
                        if resource is MEMCACHED
                        else None
                    ),
                )
            )
    tasks = [asyncio.create_task(i.run(), name=f"informer-{i.resource.plural}") for i in informers]
    tasks.append(asyncio.create_task(publisher.run_flusher(), name="flusher"))
    tasks.append(
        asyncio.create_task(_resync(publisher, informers, args.resync, skip), name="resync")
    )
    log.info("watcher started", extra={"namespaces": ",".join(n or "*" for n in namespaces)})
    try:
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopping and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(publisher.flush(), timeout=10)
        except Exception as err:
            log.warning("final flush failed: %s", err)
        await conn.close()
        log.info("watcher stopped")
