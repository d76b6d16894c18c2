"""The controller-runtime peer the bench compares with (bench/peers/controller_runtime/) does
the same work as this pipeline, or the comparison is void: on the real control plane its
Deployment, Service and PodDisruptionBudget carry every field our reconciler's builders
(desired.py, companions.py) give them, by the same ``matches`` the bench's observer uses, and
its status has the same fields and condition reasons as the status service's, and it records
the same Kubernetes Event (one, Available, for a healthy new CR). Under leader election only one
of two replicas reconciles."""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import metric_sum
from bench.peers.build import ensure_built
from deploy.local.processes import Supervisor
from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api.models import Memcached
from tests.conftest import Cluster, free_port
from tests.support import wait_for

pytestmark = pytest.mark.e2e


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


@contextlib.contextmanager
def go_peer(
    cluster: Cluster, namespace: str, state: Path, *, replicas: int = 1
) -> Iterator[list[int]]:
    """``replicas`` peer processes against the session cluster; yields their metrics ports."""
    binary = ensure_built()
    supervisor = Supervisor(state)
    ports: list[int] = []
    try:
        for i in range(replicas):
            port = free_port()
            ports.append(port)
            supervisor.start(
                f"go-peer-{i}",
                [
                    str(binary),
                    f"--kubeconfig={cluster.kubeconfig}",
                    f"--namespace={namespace}",
                    f"--metrics-bind-address=127.0.0.1:{port}",
                    f"--health-probe-bind-address=127.0.0.1:{free_port()}",
                    "--max-concurrent-reconciles=2",
                    f"--leader-elect={'true' if replicas > 1 else 'false'}",
                ],
            )
        yield ports
    finally:
        for rec in supervisor.records():
            supervisor.stop(rec.name)
            # Shown by pytest only when the test fails: what the peer said.
            print(f"--- {rec.name}", Path(rec.log).read_text(errors="replace")[-6000:])


def test_same_objects_and_status_as_the_pipeline(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    spec = {
        "size": 2,
        "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "50m"}},
        "monitoring": {"enabled": True},
    }
    with go_peer(cluster, namespace, tmp_path / "peer"):
        cluster.apply_memcached(namespace, "mc", spec)
        cluster.wait_available(namespace, "mc", timeout=120)
        cr = cluster.get_mc(namespace, "mc")
        model = Memcached.from_api(cr)
        live = {
            kind: cluster.kubectl_json("get", kind, "-n", namespace, "mc")
            for kind in ("deployment", "service", "pdb")
        }
        # The same fields as our reconciler builds (the progress deadline is our default).
        assert matches(live["deployment"], desired_deployment(model, progress_deadline_seconds=600))
        assert matches(live["service"], desired_service(model))
        pdb = desired_pdb(model)
        assert pdb is not None and matches(live["pdb"], pdb)
        command = live["deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
        # 128 MiB less 16 MiB of overhead, as desired.cache_memory_mb derives it.
        assert command[:3] == ["memcached", "-m", "112"]

        status = cr["status"]
        assert status["readyReplicas"] == 2
        assert len(status["nodes"]) == 2 and status["endpointCount"] == 2
        assert all(e.endswith(":11211") for e in status["endpoints"])
        assert status["observedGeneration"] == cr["metadata"]["generation"]
        reasons = {t: (c["status"], c["reason"]) for t, c in _conditions(cr).items()}
        assert reasons == {
            "Available": ("True", "AllReplicasReady"),
            "Progressing": ("False", "RolloutComplete"),
            "Degraded": ("False", "ReconcileSucceeded"),
        }

        # The Event the status service records for a healthy new CR, and no other: a Kubernetes
        # write per CR that the pipeline pays, so the peer pays it too.
        def peer_events() -> list[tuple[str, str, str, str]]:
            items = cluster.kubectl_json("get", "events.events.k8s.io", "-n", namespace)["items"]
            return [
                (e["type"], e["reason"], e.get("action", ""), e.get("note", ""))
                for e in items
                if e.get("reportingController") == "memcached-operator/status"
                and e["regarding"]["name"] == "mc"
            ]

        wait_for(lambda: peer_events(), timeout=30, what="the peer's Available Event")
        events = peer_events()
        assert [e[:3] for e in events] == [("Normal", "AllReplicasReady", "StatusChanged")], events
        assert events[0][3].startswith("Available is True: "), events

        # Below two replicas the PDB goes, as the pipeline's reconciler deletes it.
        cluster.kubectl(
            "patch", "mc", "mc", "-n", namespace, "--type=merge", "-p", '{"spec":{"size":1}}'
        )
        wait_for(
            lambda: (
                cluster.kubectl("get", "pdb", "-n", namespace, "mc", check=False).returncode != 0
            ),
            timeout=60,
            what="the PDB deleted below two replicas",
        )
        wait_for(
            lambda: (
                cluster.get_mc(namespace, "mc").get("status", {}).get("readyReplicas") == 1
                and len(cluster.get_mc(namespace, "mc")["status"]["nodes"]) == 1
            ),
            timeout=90,
            what="the status at one replica",
        )


def test_only_the_leader_reconciles(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    with go_peer(cluster, namespace, tmp_path / "peer", replicas=2) as ports:
        for i in range(3):
            cluster.apply_memcached(namespace, f"mc-{i}", {"size": 1})
        for i in range(3):
            cluster.wait_available(namespace, f"mc-{i}", timeout=120)
        texts = [_scrape(port) for port in ports]
        runs = [
            metric_sum(t, "controller_runtime_reconcile_total", controller="memcached")
            for t in texts
        ]
        leaders = [metric_sum(t, "leader_election_master_status") for t in texts]
        assert sorted(leaders) == [0.0, 1.0], leaders
        assert min(runs) == 0 and max(runs) >= 3, runs
