"""Issue 15: transient failures do not spend the retry budget. The API server is stopped for
three minutes (MCOP_TEST_APISERVER_OUTAGE seconds) while 100 CRs wait to be reconciled; every
attempt in that time fails with a refused connection. Once it is back, every CR converges and
nothing was dead-lettered.

The reconcilers start only after the API server stopped, so all 100 requests are in flight
during the outage rather than done before it. With the defaults (10 deliveries, backoff capped
at 60 s) a queue that counted those failures would dead-letter every request within about
100 s.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import DEADLETTER_STREAM
from tests.conftest import Cluster
from tests.support import (
    Services,
    create_many,
    memcached_manifest,
    pending_requests,
    read_stream,
    wait_for,
)

OUTAGE = float(os.environ.get("MCOP_TEST_APISERVER_OUTAGE", "180"))
CRS = 100
APISERVER = "kube-apiserver"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(OUTAGE + 900)]


def converged(cluster: Cluster, namespace: str) -> dict[str, int] | None:
    """Counts of CRs with the desired Deployment and with Available=True, once all have both."""
    try:
        crs, _, as_desired = cluster.deployments_as_desired(namespace)
    except AssertionError:
        return None  # the API server is still coming back
    good = len(as_desired)
    available = sum(
        1
        for c in crs
        if any(
            cond.get("type") == "Available" and cond.get("status") == "True"
            for cond in (c.get("status") or {}).get("conditions") or []
        )
    )
    return {"deployments": good, "available": available} if good == available == CRS else None


def apiserver_ready(cluster: Cluster) -> bool:
    return cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0


def test_crs_in_flight_during_a_three_minute_api_server_outage_all_converge_none_dead_lettered(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.start("watcher", "--namespaces", namespace, name="watcher")
    service_procs.start("status", name="status")
    asyncio.run(
        create_many(
            cluster.kubeconfig,
            [memcached_manifest(f"mc-{i:03d}", namespace) for i in range(CRS)],
            concurrency=16,
        )
    )
    wait_for(
        lambda: asyncio.run(pending_requests(cluster.nats_url, "reconcile", namespace)) == CRS,
        timeout=60,
        what=f"{CRS} reconcile requests waiting",
    )

    record = cluster.supervisor.get(APISERVER)
    assert record is not None
    cluster.supervisor.stop(APISERVER)
    stopped = time.monotonic()
    try:
        for i in range(2):
            service_procs.start("reconciler", name=f"reconciler-{i}")
        wait_for(
            lambda: any("retrying in" in service_procs.log(f"reconciler-{i}") for i in range(2)),
            timeout=60,
            what="the reconcilers retrying against the stopped API server",
        )
        # The scenario itself: the API server stays away for OUTAGE seconds in all, while the
        # reconcilers keep failing to reach it.
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
    finally:
        cluster.supervisor.start(APISERVER, record.argv)
        wait_for(lambda: apiserver_ready(cluster), timeout=120, what="kube-apiserver ready")

    result = wait_for(
        lambda: converged(cluster, namespace),
        timeout=300,
        every=2,
        what=f"all {CRS} CRs with their Deployment and Available",
    )
    assert result == {"deployments": CRS, "available": CRS}
    filter_ = f"{subjects.PREFIX}.{subjects.DEADLETTER}.*.{subjects.encode_token(namespace)}.*"
    assert asyncio.run(read_stream(cluster.nats_url, filter_, stream=DEADLETTER_STREAM)) == []
    logs = service_procs.log("reconciler-0") + service_procs.log("reconciler-1")
    assert "not counted towards 10 deliveries" in logs
    assert "dead-lettered" not in logs
