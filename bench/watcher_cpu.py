"""The watcher's CPU per change, its own Python side alone: `python -m bench.watcher_cpu`.

The full bench shares two cores with the control plane, where one process's CPU seconds move
20-30 % from run to run. This one runs the watcher's real emit path (emitter.py: owner, routing,
span, CloudEvent encoding; publisher.py: pipelined publishes confirmed in order, requests
behind their events) against a real nats-server of its own, fed by a fixed sequence of the
changes a 1-replica Memcached goes through in the bench (the CR, its Deployment and pod as they
roll out, the CR's status writes; objects as the reconciler builds them, with managedFields),
without a cluster. It prints the process's CPU microseconds per change (``time.process_time``,
user + system of this process only), so two commits can be compared a few percent apart; the
nats-server's CPU is printed beside it. ``--profile`` adds the top functions by CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import io
import os
import pstats
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext

from bench.meters import cpu_seconds
from deploy.local import nats as local_nats
from deploy.local.layout import free_port
from deploy.local.processes import Supervisor
from memcached_operator.reconciler.desired import desired_deployment
from memcached_operator.routes import router
from memcached_operator.shared.api.contract import OWNER_ANNOTATION
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.stream_admin import ensure_streams
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.watcher.emitter import Emitter
from memcached_operator.watcher.owners import Kind, replica_set_name
from memcached_operator.watcher.publisher import Publisher

CR = Kind("memcached", owned=False)
DEPLOYMENT = Kind("deployment", owned=True)
POD = Kind("pod", owned=True)
TEMPLATE_HASH = "7d9c5b6f4"


def _managed(manager: str, second: int, subresource: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "manager": manager,
        "operation": "Apply" if manager == "memcached-operator" else "Update",
        "apiVersion": "v1",
        "time": f"2026-12-06T20:00:{second:02d}Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}, "f:spec": {"f:size": {}}},
    }
    if subresource:
        entry["subresource"] = subresource
    return entry


def _meta(name: str, namespace: str, rv: int, uid: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "resourceVersion": str(rv),
        "generation": 1,
        "creationTimestamp": "2026-12-06T20:00:00Z",
        **more,
    }


def changes(name: str, namespace: str, rv: int) -> list[tuple[Kind, str, dict[str, Any]]]:
    """The changes the bench's 1,000-CR burst streams per CR, in their order: 10 of them."""
    cr_uid, dep_uid, pod_uid = (str(uuid.uuid4()) for _ in range(3))
    spec = {"size": 1}
    cr = {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": _meta(name, namespace, rv, cr_uid, managedFields=[_managed("bench", 1)]),
        "spec": spec,
    }
    deployment = desired_deployment(
        Memcached.model_validate({**cr, "metadata": {"name": name, "namespace": namespace}}),
        cr_uid=cr_uid,
    )
    deployment["metadata"].update(
        _meta(name, namespace, rv + 1, dep_uid, managedFields=[_managed("memcached-operator", 2)])
    )
    deployment["status"] = {"observedGeneration": 1}
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(
            f"{name}-{TEMPLATE_HASH}-x7k2p",
            namespace,
            rv + 3,
            pod_uid,
            labels={**template["metadata"]["labels"], "pod-template-hash": TEMPLATE_HASH},
            annotations={**template["metadata"].get("annotations", {}), OWNER_ANNOTATION: name},
            ownerReferences=[
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": replica_set_name(name, TEMPLATE_HASH),
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            managedFields=[_managed("kube-controller-manager", 3)],
        ),
        "spec": {**template["spec"], "nodeName": "kwok-node-0"},
        "status": {"phase": "Pending"},
    }

    def step(obj: dict[str, Any], bump: int, **changed: Any) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        out["metadata"]["resourceVersion"] = str(int(out["metadata"]["resourceVersion"]) + bump)
        for path, value in changed.items():
            out[path] = value
        return out

    scheduled = step(pod, 1, status={"phase": "Pending", "conditions": [{"type": "PodScheduled"}]})
    ready = step(
        pod,
        2,
        status={
            "phase": "Running",
            "podIP": "10.0.0.7",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    )
    dep_progress = step(deployment, 2, status={"observedGeneration": 1, "replicas": 1})
    dep_ready = step(
        deployment,
        6,
        status={"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1},
    )
    cr_rolling = step(cr, 4, status={"conditions": [{"type": "Progressing", "status": "True"}]})
    cr_available = step(cr, 8, status={"conditions": [{"type": "Available", "status": "True"}]})
    return [
        (CR, "added", cr),
        (DEPLOYMENT, "added", deployment),
        (DEPLOYMENT, "modified", dep_progress),
        (POD, "added", pod),
        (POD, "modified", scheduled),
        (CR, "modified", cr_rolling),
        (POD, "modified", ready),
        (DEPLOYMENT, "modified", dep_ready),
        (CR, "modified", cr_available),
        (DEPLOYMENT, "modified", step(dep_ready, 1)),
    ]


async def run(
    n: int, url: str, profile: cProfile.Profile | None, rate: float, group: int = 1
) -> tuple[int, int, float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = Publisher(js, nc=nc, worker="bench")
    emitter = Emitter(publisher, router())
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    work = [c for i in range(n) for c in changes(f"mc-{i:05d}", namespace, 1000 + 20 * i)]
    flusher = asyncio.create_task(publisher.run_flusher())
    # Warm up (imports, first publishes) outside the measurement.
    for kind, change, obj in changes("warm-up", namespace, 10):
        await emitter.emit(kind, change, obj, None)
    await publisher.flush()
    cpu0, wall0 = time.process_time(), time.monotonic()
    times0 = os.times()
    if profile is not None:
        profile.enable()
    for i, (kind, change, obj) in enumerate(work):
        if rate and i % group == 0:
            # Changes as a watch delivers them during the burst, ``group`` at a time.
            delay = wall0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await emitter.emit(kind, change, obj, None)
    await publisher.flush()
    if profile is not None:
        profile.disable()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    times = os.times()
    stored = await _stored(js, namespace) - 10  # less the warm-up CR's changes
    print(f"  user {times.user - times0.user:.2f} s, system {times.system - times0.system:.2f} s")
    flusher.cancel()
    await nc.close()
    return len(work), stored, cpu, wall


async def _stored(js: JetStreamContext, namespace: str) -> int:
    """Events the stream holds of ``namespace``'s objects (a run's namespace is its own)."""
    info = await js.stream_info(
        EVENTS_STREAM, subjects_filter=f"{subjects.PREFIX}.events.*.{namespace}.>"
    )
    return sum((info.state.subjects or {}).values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="CRs (10 changes each)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; each is printed")
    parser.add_argument(
        "--rate",
        type=float,
        default=250.0,
        help="changes per second (the bench's burst averages ~230); 0: as fast as it goes",
    )
    parser.add_argument("--group", type=int, default=1, help="changes arriving together")
    parser.add_argument("--profile", action="store_true", help="top functions by CPU time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mcop-watcher-cpu-") as tmp:
        sup = Supervisor(Path(tmp))
        port = free_port()
        rec = local_nats.start(sup, port=port, monitor_port=free_port(), auth=False, tls=False)
        try:
            for i in range(args.repeat):
                profile = cProfile.Profile(time.process_time) if args.profile else None
                server0 = cpu_seconds(rec.pid)
                count, stored, cpu, wall = asyncio.run(
                    run(args.n, f"nats://127.0.0.1:{port}", profile, args.rate, args.group)
                )
                server = cpu_seconds(rec.pid) - server0
                print(
                    f"run {i + 1}: {count} changes, {stored} stored, watcher"
                    f" {cpu / count * 1e6:.0f} µs CPU per"
                    f" change ({cpu:.2f} s), nats-server {server / count * 1e6:.0f} µs,"
                    f" {count / wall:.0f} changes/s, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                if profile is not None:
                    out = io.StringIO()
                    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
                    print(out.getvalue())
        finally:
            sup.stop(local_nats.NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
