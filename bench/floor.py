"""The API floor: the least an operator can do to converge the CRs, as a plain client.

No queue, no retries beyond the client's, no leases, no outcomes: three list+watches (the
CRs, to learn of them; the Deployments and pods, to know when to write status), per new CR one
server-side apply of each object this operator's reconciler owns for it, built by the same
functions (the Deployment, the headless Service, and the PodDisruptionBudget when size >= 2),
and a status write whenever a Deployment or pod change alters the folded status (the same
``fold_status`` the status service uses).
Applies and status writes share one semaphore of ``--concurrency``. It runs as its own
process so that its memory and CPU are measured like the contenders'.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import signal
from pathlib import Path
from typing import Any

from bench.watch import watch_forever
from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment
from memcached_operator.shared.api.contract import LABEL_MANAGED_BY, MANAGED_BY, OWNER_ANNOTATION
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.shared.kube.client import (
    DEPLOYMENT,
    MEMCACHED,
    PDB,
    POD,
    SERVICE,
    JsonObject,
    KubeClient,
)
from memcached_operator.status.conditions import fold_status, ready_nodes, status_changed

log = logging.getLogger("bench.floor")
SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


class Floor:
    def __init__(self, kube: KubeClient, *, concurrency: int) -> None:
        self.kube = kube
        self.sem = asyncio.Semaphore(concurrency)
        self.crs: dict[str, JsonObject] = {}
        self.deployments: dict[str, JsonObject] = {}
        self.pods: dict[str, dict[str, JsonObject]] = {}
        self.written: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.applied: set[str] = set()
        self.locks: dict[str, asyncio.Lock] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.applies = 0
        self.status_writes = 0

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_cr(self, kind: str, obj: JsonObject) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.crs.pop(name, None)
            return
        self.crs[name] = obj
        if name not in self.applied:
            self.applied.add(name)
            self._spawn(self.apply(obj))

    def on_deployment(self, kind: str, obj: JsonObject) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.deployments.pop(name, None)
        else:
            self.deployments[name] = obj
        self._spawn(self.refresh(name))

    def on_pod(self, kind: str, obj: JsonObject) -> None:
        meta = obj["metadata"]
        owner = (meta.get("annotations") or {}).get(OWNER_ANNOTATION)
        if not owner:
            return
        pods = self.pods.setdefault(owner, {})
        if kind == "DELETED":
            pods.pop(meta["name"], None)
        else:
            pods[meta["name"]] = obj
        self._spawn(self.refresh(owner))

    async def apply(self, cr_obj: JsonObject) -> None:
        cr = Memcached.from_api(cr_obj)
        # A new CR has none of them yet: nothing to read or delete first, only to apply.
        wanted = (
            (DEPLOYMENT, desired_deployment(cr)),
            (SERVICE, desired_service(cr)),
            (PDB, desired_pdb(cr)),
        )
        for resource, desired in wanted:
            if desired is None:
                continue
            async with self.sem:
                await self.kube.apply(resource, desired, field_manager="bench-floor")
            self.applies += 1
        meta = cr_obj["metadata"]
        self.outcomes[cr.name] = Outcome(
            key=f"{cr.namespace}/{cr.name}",
            uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            result="success",
            time=dt.datetime.now(dt.UTC),
        )

    async def refresh(self, name: str) -> None:
        lock = self.locks.setdefault(name, asyncio.Lock())
        async with lock:
            cr = self.crs.get(name)
            if cr is None:
                return
            new = fold_status(
                cr=cr,
                deployment=self.deployments.get(name),
                nodes=ready_nodes(cr, list(self.pods.get(name, {}).values())),
                outcome=self.outcomes.get(name),
                now=dt.datetime.now(dt.UTC),
            )
            if not status_changed(self.written.get(name, cr.get("status")), new):
                return
            async with self.sem:
                meta = cr["metadata"]
                await self.kube.patch_status(MEMCACHED, meta["namespace"], name, {"status": new})
            self.written[name] = new
            self.status_writes += 1


async def serve(args: argparse.Namespace) -> None:
    kube = await KubeClient.connect(args.kubeconfig)
    floor = Floor(kube, concurrency=args.concurrency)
    synced = [asyncio.Event() for _ in range(3)]
    watches = [
        asyncio.create_task(
            watch_forever(
                kube,
                res,
                namespace=args.namespace,
                on_event=handler,
                synced=ev,
                label_selector=selector,
            )
        )
        for (res, handler, selector), ev in zip(
            (
                (MEMCACHED, floor.on_cr, None),
                (DEPLOYMENT, floor.on_deployment, SELECTOR),
                (POD, floor.on_pod, SELECTOR),
            ),
            synced,
            strict=True,
        )
    ]
    await asyncio.gather(*(ev.wait() for ev in synced))
    await asyncio.to_thread(Path(args.ready_file).write_text, "ready\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for task in watches:
        task.cancel()
    await asyncio.gather(*watches, *floor.tasks, return_exceptions=True)
    await kube.close()
    log.warning("floor stopped: %d applies, %d status writes", floor.applies, floor.status_writes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
