"""Issue 18: the pipeline on a three-node JetStream cluster (every stream at three replicas).

The services run as deploy/base ships them (2 watchers, 2 reconcilers, 2 status replicas), each
connected to one node of the three with the full server list. While 100 CRs converge, the node
each service is connected to is SIGKILLed in turn (and restarted once the services moved on);
then the requests stream's leader is killed, and every CR's size is changed afterwards, so that
reads right after a leader change must still see the newest spec (read-your-writes through
follower-answered direct gets). Nothing may be lost, duplicated, stuck or dead-lettered, and
two status replicas never write one CR at the same time (the API server's audit log).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from chaos.status_writes import overlapping, status_write_spans
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import REQUESTS_STREAM
from memcached_operator.shared.events import codec as events
from tests.conftest import Cluster, free_port
from tests.e2e.test_observability import http_status
from tests.e2e.test_reconciler import converged, dead_letters
from tests.support import (
    Services,
    condition,
    create_many,
    memcached_manifest,
    read_stream,
    services,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

N = 100
FAST = {"ACK_WAIT": "5", "LEASE_TTL": "5"}


@pytest.fixture
def cluster_namespace(nats_cluster: Cluster) -> str:
    name = "nats-cluster-e2e"
    nats_cluster.kubectl("create", "namespace", name)
    return name


def _available(cluster: Cluster, namespace: str, size: int) -> list[str] | None:
    items = cluster.kubectl_json("get", "mc", "-n", namespace)["items"]
    good = [
        c["metadata"]["name"]
        for c in items
        if condition(c, "Available").get("status") == "True"
        and (c.get("status") or {}).get("readyReplicas") == size
        and (c.get("status") or {}).get("observedGeneration") == c["metadata"]["generation"]
    ]
    return good if len(good) == N else None


def _added_events(cluster: Cluster, namespace: str) -> dict[str, int]:
    filter_ = subjects.wildcard(subjects.EVENTS, "memcached", namespace)
    counts: dict[str, int] = defaultdict(int)
    for msg in asyncio.run(read_stream(cluster.nats_url, filter_)):
        event = events.decode(msg.headers, msg.data)
        if event.change == "added":
            counts[msg.subject] += 1
    return counts


def _overlapping_status_writes(cluster: Cluster, namespace: str) -> list[str]:
    """CRs whose status two requests wrote at once (from the audit log's timestamps)."""
    return overlapping(
        status_write_spans(cluster.layout.state_dir / "logs" / "audit.log", namespace)
    )


def _kill_and_restart(cluster: Cluster, node: int, users: list[str]) -> None:
    """SIGKILL ``node``; wait until every service user is connected again (elsewhere), then
    start the node again and wait until it is healthy (caught up)."""
    cluster.nats.kill(node)
    for user in users:
        wait_for(
            lambda user=user: cluster.nats.node_of_client(user),  # type: ignore[misc]
            timeout=60,
            what=f"{user} to reconnect to another node",
        )
    cluster.nats.start(node)
    wait_for(lambda: cluster.nats.healthy(node), timeout=60, what=f"node {node} healthy")


def test_100_crs_converge_while_nodes_and_a_stream_leader_die(
    nats_cluster: Cluster, cluster_namespace: str, tmp_path: Path
) -> None:
    cluster, namespace = nats_cluster, cluster_namespace
    placements = cluster.nats.streams()
    assert set(placements) >= {REQUESTS_STREAM, "MCOP_EVENTS", "KV_mcop-leases"}
    assert all(len(p.replicas) == 3 for p in placements.values()), placements

    users = ["watcher", "reconciler", "status"]
    with services(tmp_path / "services", cluster.env(**FAST)) as svc:
        _start_fleet(svc, namespace)
        wait_for(
            lambda: all(cluster.nats.node_of_client(u) for u in users),
            timeout=60,
            what="every service connected",
        )
        asyncio.run(
            create_many(
                cluster.kubeconfig,
                [memcached_manifest(f"mc-{i:03d}", namespace) for i in range(N)],
            )
        )
        # The node each service is connected to, killed in turn while the CRs converge.
        for user in users:
            nodes = cluster.nats.node_of_client(user)
            assert nodes, f"{user} is connected nowhere"
            _kill_and_restart(cluster, nodes[0], users)
        wait_for(
            lambda: converged(cluster, namespace, N), timeout=300, what=f"{N} correct Deployments"
        )
        wait_for(lambda: _available(cluster, namespace, 1), timeout=300, what="all Available")

        # The requests stream's leader, killed; then every CR changes: each reconcile must read
        # the newest spec right after the watcher published it, whichever replica answers.
        leader = cluster.nats.leader_of(REQUESTS_STREAM)
        assert leader is not None
        cluster.nats.kill(leader)
        wait_for(
            lambda: cluster.nats.leader_of(REQUESTS_STREAM) not in (None, leader),
            timeout=60,
            what="a new requests leader",
        )
        for i in range(N):
            cluster.kubectl(
                "patch",
                "mc",
                "-n",
                namespace,
                f"mc-{i:03d}",
                "--type=merge",
                "-p",
                json.dumps({"spec": {"size": 2}}),
            )
        cluster.nats.start(leader)
        wait_for(
            lambda: converged(cluster, namespace, N), timeout=300, what="Deployments at size 2"
        )
        wait_for(lambda: _available(cluster, namespace, 2), timeout=300, what="2 ready each")
        for name in list(svc.started):
            log = svc.log(name)
            assert "Traceback" not in log, f"{name} crashed:\n{log[-3000:]}"

    added = _added_events(cluster, namespace)
    assert len(added) == N, "a CR without its added event"
    assert all(count == 1 for count in added.values()), "an added event stored twice"
    assert dead_letters(cluster, namespace) == []
    deployments = cluster.kubectl_json("get", "deployments", "-n", namespace)["items"]
    assert len(deployments) == N, "one Deployment per CR"
    assert _overlapping_status_writes(cluster, namespace) == []


def _start_fleet(svc: Services, namespace: str) -> None:
    """As deploy/base ships it: two of each service."""
    for i in range(2):
        svc.start("watcher", "--namespaces", namespace, name=f"watcher-{i}")
        svc.start("reconciler", name=f"reconciler-{i}")
        svc.start("status", name=f"status-{i}")


def test_one_node_lost_keeps_working_two_lost_is_unready_not_a_restart_loop(
    nats_cluster: Cluster, tmp_path: Path
) -> None:
    cluster, namespace = nats_cluster, "nats-cluster-quorum"
    cluster.kubectl("create", "namespace", namespace)
    ports = {service: free_port() for service in ("watcher", "reconciler", "status")}
    # Work that waits without progress for 5 s would fail liveness, were NATS not the cause.
    env = {**FAST, "LIVENESS_STALL_SECONDS": "5"}
    with services(tmp_path / "services", cluster.env(**env)) as svc:
        for service, port in ports.items():
            extra = ("--namespaces", namespace) if service == "watcher" else ()
            svc.start(service, *extra, "--health-port", str(port), name=service)
        for service, port in ports.items():
            wait_for(lambda p=port: http_status(p, "/readyz") == 200, timeout=60, what=service)

        first, second = 0, 1
        cluster.nats.kill(first)
        cluster.apply_memcached(namespace, "two-of-three", {"size": 1})
        cluster.wait_available(namespace, "two-of-three", timeout=120)
        for service, port in ports.items():
            assert http_status(port, "/readyz") == 200, f"{service} not ready on 2 of 3 nodes"

        cluster.nats.kill(second)
        try:
            for service, port in ports.items():
                wait_for(
                    lambda p=port: http_status(p, "/readyz") == 503,
                    timeout=60,
                    what=f"{service} not ready on 1 of 3 nodes",
                )
            # Work arrives and cannot be done: it waits, longer than the liveness bound.
            cluster.apply_memcached(namespace, "one-of-three", {"size": 1})
            time.sleep(15)
            for service, port in ports.items():
                assert http_status(port, "/healthz") == 200, f"{service} reported dead"
                assert svc.supervisor.running(service) is not None, f"{service} exited"
        finally:
            cluster.nats.start(first, wait=False)
            cluster.nats.start(second)
        for node in (first, second):
            wait_for(lambda n=node: cluster.nats.healthy(n), timeout=90, what=f"node {node}")
        for service, port in ports.items():
            wait_for(lambda p=port: http_status(p, "/readyz") == 200, timeout=90, what=service)
        cluster.wait_available(namespace, "one-of-three", timeout=180)
        for service in ports:
            assert svc.supervisor.running(service) is not None, f"{service} exited"
    assert dead_letters(cluster, namespace) == []
