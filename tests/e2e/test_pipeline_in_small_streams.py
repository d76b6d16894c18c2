"""Issue 15: bounded streams, with all services running against the real cluster.

An operator bounds the events stream by hand to a few hundred KiB; the services, started
afterwards, keep that limit, and 2,000 CRs (MCOP_TEST_BOUNDED_CRS) still all get their
Deployments while the stream drops its oldest records to make room. And a reconcile that
changes nothing (a resync of a converged CR) stores no new outcome, while the status refresh it
asks for still repairs a status someone broke.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import nats
import pytest
from nats.js.api import StreamInfo

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import DEADLETTER_STREAM, EVENTS_STREAM, ensure_streams
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.workqueue.queue import enqueue
from memcached_operator.shared.workqueue.types import ORIGIN
from tests.conftest import Cluster
from tests.support import Services, create_many, memcached_manifest, read_stream, wait_for

N = int(os.environ.get("MCOP_TEST_BOUNDED_CRS", "2000"))
EVENTS_LIMIT = 512 * 1024

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


async def events_info(cluster: Cluster, *, max_bytes: int | None = None) -> StreamInfo:
    """The events stream (created if missing), with its byte limit set by hand if given."""
    nc = await nats.connect(cluster.nats_url, connect_timeout=5)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        info = await js.stream_info(EVENTS_STREAM)
        if max_bytes is not None:
            info = await js.update_stream(dataclasses.replace(info.config, max_bytes=max_bytes))
        return info
    finally:
        await nc.close()


def converged(cluster: Cluster, namespace: str, expected: int) -> int | None:
    crs, _, good = cluster.deployments_as_desired(namespace)
    return len(good) if len(good) == expected == len(crs) else None


def dead_letters(cluster: Cluster, namespace: str) -> list[Any]:
    filter_ = f"{subjects.PREFIX}.{subjects.DEADLETTER}.*.{subjects.encode_token(namespace)}.*"
    return asyncio.run(read_stream(cluster.nats_url, filter_, stream=DEADLETTER_STREAM))


def test_a_small_events_stream_keeps_converging_2000_crs_and_drops_its_oldest_records(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    original = asyncio.run(events_info(cluster)).config.max_bytes
    # `nats stream edit MCOP_EVENTS --max-bytes 512KiB`, as an operator would.
    before = asyncio.run(events_info(cluster, max_bytes=EVENTS_LIMIT))
    try:
        service_procs.start("watcher", "--namespaces", namespace, name="watcher")
        for i in range(2):
            service_procs.start("reconciler", "--concurrency", "16", name=f"reconciler-{i}")
        service_procs.start("status", name="status")
        asyncio.run(
            create_many(
                cluster.kubeconfig,
                [memcached_manifest(f"mc-{i:04d}", namespace) for i in range(N)],
                concurrency=32,
            )
        )
        wait_for(
            lambda: converged(cluster, namespace, N),
            timeout=900,
            every=5,
            what=f"all {N} CRs with their Deployment",
        )

        # The admin step, run again (as on every upgrade), keeps the hand-set limit and says so.
        admin = subprocess.run(
            [sys.executable, "-m", "memcached_operator.cli", "streams", "ensure"],
            env=cluster.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert admin.returncode == 0, admin.stderr
        assert "keeps max_bytes=524288" in admin.stdout + admin.stderr
        after = asyncio.run(events_info(cluster))
        assert after.config.max_bytes == EVENTS_LIMIT
        assert after.state.bytes <= EVENTS_LIMIT
        # The oldest records went first: what this test published first is gone, the newest is
        # there (the stream is a window of the latest records).
        assert after.state.first_seq > before.state.last_seq + 1
        assert after.state.last_seq > before.state.last_seq + N
        assert dead_letters(cluster, namespace) == []
    finally:
        asyncio.run(events_info(cluster, max_bytes=original))


def test_a_resync_of_a_converged_cr_stores_no_outcome_but_still_repairs_its_status(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.start("watcher", "--namespaces", namespace, name="watcher")
    service_procs.start("reconciler", name="reconciler")
    service_procs.start("status", name="status")
    cluster.apply_memcached(namespace, "steady", {"size": 1})
    cluster.wait_available(namespace, "steady")
    key = ObjectKey(namespace, "steady")
    outcomes = subjects.subject(subjects.OUTCOMES, "reconcile", key)

    def stored() -> int:
        return len(asyncio.run(read_stream(cluster.nats_url, outcomes)))

    def ready_replicas() -> Any:
        cr = cluster.kubectl_json("get", "mc", "-n", namespace, "steady")
        return (cr.get("status") or {}).get("readyReplicas")

    wait_for(lambda: ready_replicas() == 1, timeout=60, what="readyReplicas 1")
    count = stored()
    assert count >= 1
    # Someone breaks the status; a status write wakes no reconcile, so it stays broken...
    cluster.kubectl(
        "patch",
        "mc",
        "steady",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"readyReplicas": 7}}),
    )

    async def resync() -> None:
        nc = await nats.connect(cluster.nats_url, connect_timeout=5)
        try:
            await enqueue(
                nc.jetstream(),
                controller="reconcile",
                key=key,
                headers={ORIGIN: "watcher:resync"},
            )
        finally:
            await nc.close()

    # ... until the resync reconciles it again: nothing to write, the same verdict.
    asyncio.run(resync())
    wait_for(lambda: ready_replicas() == 1, timeout=60, what="the status repaired")
    assert stored() == count
