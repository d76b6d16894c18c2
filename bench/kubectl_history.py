"""How long `kubectl memcached history` and `explain` take on a large stream.

Starts a real nats-server (with the operator's users), creates the streams, publishes
synthetic records with the real codecs for ``--crs`` Memcacheds (10,000 by default), ten per
CR (100,000): the CR's added event, three status writes, a spec change, two outcomes, two
Deployment events and a pod event, plus a few dead letters and pending requests. Then, as the
NATS ``audit`` user, it times reading one CR's history (``history.read`` + ``build``) and the
stream part of ``explain`` (``explain.stream_facts``; the rest of explain is three API-server
reads, which do not depend on the stream) for CRs spread over the stream, and one run of the
real ``kubectl-memcached history`` command, Python start-up included. Prints the figures;
``--json`` writes them to a file (a summary: medians and percentiles, no samples).

    python -m bench.kubectl_history [--crs 10000] [--samples 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from deploy.local import nats as local_nats
from deploy.local.processes import Supervisor
from memcached_operator.admin import nats_conf
from memcached_operator.audit import explain, history
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.connection import inbox_prefix
from memcached_operator.shared.bus.streams import EVENTS_STREAM, GiB, ensure_streams
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.shared.workqueue import deadletter, queue, types
from tests.conftest import free_port

NAMESPACES = 20
PER_CR = 10


def _cr(key: ObjectKey, uid: str, generation: int, size: int, conditions: list[Any]) -> Any:
    return {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {
            "namespace": key.namespace,
            "name": key.name,
            "uid": uid,
            "generation": generation,
            "resourceVersion": str(random.randrange(10**9)),
            "managedFields": [{"manager": "kubectl", "time": "2026-12-02T10:00:00Z"}],
        },
        "spec": {"size": size, "image": "memcached:1.6"},
        "status": {"conditions": conditions},
    }


def _records(i: int) -> list[tuple[str, dict[str, str], bytes]]:
    key = ObjectKey(f"bench-{i % NAMESPACES}", f"cache-{i}")
    uid = f"uid-{i}"
    tp = {"traceparent": f"00-{random.randbytes(16).hex()}-{random.randbytes(8).hex()}-01"}
    ev = subjects.subject(subjects.EVENTS, "memcached", key)
    out: list[tuple[str, dict[str, str], bytes]] = []

    def event(kind: str, change: str, obj: Any, subject: str) -> None:
        headers, body = events.encode(kind=kind, change=change, obj=obj, extra_headers=tp)
        out.append((subject, headers, body))

    avail = [{"type": "Available", "status": "True", "reason": "Ready", "message": "ok"}]
    event("memcached", "added", _cr(key, uid, 1, 1, []), ev)
    event("memcached", "modified", _cr(key, uid, 1, 1, avail[:0]), ev)
    event("memcached", "modified", _cr(key, uid, 1, 1, avail), ev)
    event("memcached", "modified", _cr(key, uid, 2, 3, avail), ev)
    event("memcached", "modified", _cr(key, uid, 2, 3, avail), ev)
    for generation in (1, 2):
        outcome = Outcome(
            key=str(key),
            uid=uid,
            generation=generation,
            result="success",
            time=dt.datetime.now(dt.UTC),
            trace_id=tp["traceparent"].split("-")[1],
        )
        out.append((subjects.subject(subjects.OUTCOMES, "reconcile", key), {}, outcome.to_json()))
    dep = {"metadata": {"namespace": key.namespace, "name": key.name, "uid": f"d-{i}"}}
    dsub = subjects.subject(subjects.EVENTS, "deployment", key)
    event("deployment", "added", dep, dsub)
    event("deployment", "modified", dep, dsub)
    pod = {"metadata": {"namespace": key.namespace, "name": f"{key.name}-0", "uid": f"p-{i}"}}
    pkey = ObjectKey(key.namespace, f"{key.name}-0")
    event("pod", "added", pod, subjects.subject(subjects.EVENTS, "pod", pkey))
    return out


async def populate(url: str, crs: int) -> int:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        await ensure_streams(js, max_bytes=2 * GiB)
        pending: list[Any] = []
        for i in range(crs):
            # Acknowledged publishes, 1,000 in flight: every record is stored, none dropped.
            pending += [
                js.publish(subject, body, headers=headers or None)
                for subject, headers, body in _records(i)
            ]
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
            if i % 1000 == 7:  # a few dead letters and waiting requests
                key = ObjectKey(f"bench-{i % NAMESPACES}", f"cache-{i}")
                await js.publish(
                    subjects.subject(subjects.DEADLETTER, "reconcile", key),
                    b"",
                    headers={
                        deadletter.DL_REASON: "MissingHeader",
                        deadletter.DL_ERROR: "no origin",
                    },
                )
                await queue.enqueue(
                    js, controller="reconcile", key=key, headers={types.ORIGIN: "bench"}
                )
        await asyncio.gather(*pending)
        info = await js.stream_info(EVENTS_STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def measure(url: str, user: str, password: str, crs: int, samples: int) -> dict[str, Any]:
    nc = await nats.connect(
        url, user=user, password=password, inbox_prefix=inbox_prefix(user), connect_timeout=5
    )
    try:
        picks = [random.randrange(crs) for _ in range(samples)]
        times: dict[str, list[float]] = {"history": [], "explain_streams": []}
        revisions = 0
        for i in picks:
            key = ObjectKey(f"bench-{i % NAMESPACES}", f"cache-{i}")
            started = time.perf_counter()
            memcached, outcomes = await history.read(nc, key)
            revisions = len(history.build(memcached, outcomes))
            times["history"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await explain.stream_facts(nc, key)
            times["explain_streams"].append(time.perf_counter() - started)
        return {"revisions_per_cr": revisions, **{k: _summary(v) for k, v in times.items()}}
    finally:
        await nc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crs", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    random.seed(20)
    with tempfile.TemporaryDirectory(prefix="bench-kubectl-") as tmp:
        sup = Supervisor(Path(tmp))
        port = free_port()
        local_nats.start(sup, port=port, monitor_port=free_port(), auth=True)
        try:
            passwords = nats_conf.load_passwords(Path(tmp)) or {}
            plain = f"nats://127.0.0.1:{port}"
            admin = f"nats://admin:{passwords['admin']}@127.0.0.1:{port}"
            started = time.perf_counter()
            stored = asyncio.run(populate(admin, args.crs))
            publish_s = time.perf_counter() - started
            figures = asyncio.run(
                measure(plain, "audit", passwords["audit"], args.crs, args.samples)
            )
            env = {
                **os.environ,
                "NATS_URL": plain,
                "NATS_USER": "audit",
                "NATS_PASSWORD": passwords["audit"],
            }
            # The same process doing nothing but start and parse (--help): Python's start-up
            # and imports, which the machine's load dominates, as a baseline.
            baseline = []
            for _ in range(5):
                started = time.perf_counter()
                subprocess.run(
                    [str(Path(sys.executable).parent / "kubectl-memcached"), "--help"],
                    env=env,
                    capture_output=True,
                    check=True,
                )
                baseline.append(time.perf_counter() - started)
            cli = []
            for n in range(5):
                i = n * (args.crs // 5) + 3
                started = time.perf_counter()
                proc = subprocess.run(
                    [
                        str(Path(sys.executable).parent / "kubectl-memcached"),
                        "history",
                        f"cache-{i}",
                        "-n",
                        f"bench-{i % NAMESPACES}",
                        "-o",
                        "json",
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                cli.append(time.perf_counter() - started)
                assert json.loads(proc.stdout)["revisions"], proc.stdout
        finally:
            sup.stop(local_nats.NAME)
    result = {
        "crs": args.crs,
        "events_stream_messages": stored,
        "publish_s": round(publish_s, 1),
        "samples": args.samples,
        **figures,
        "cli_history": _summary(cli),
        "cli_help_baseline": _summary(baseline),
    }
    print(f"events stream: {stored} messages for {args.crs} CRs (published in {publish_s:.1f}s)")
    print(f"history (read + build, as the audit user): {result['history']}")
    print(f"explain, stream reads (as the audit user):  {result['explain_streams']}")
    print(f"kubectl-memcached history -o json, whole process: {result['cli_history']}")
    print(f"kubectl-memcached --help (start-up baseline):     {result['cli_help_baseline']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
