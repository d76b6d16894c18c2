"""Issue 5 acceptance: what users see of the pipeline in the Memcached's status and Events."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.status_writes import status_write_spans
from deploy.local.cluster import NEVER_READY_IMAGE, SLOW_READY_IMAGE
from tests.conftest import Cluster
from tests.support import Services, condition, wait_for, wait_requests_handled

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


class StatusRecorder:
    """Every version of one CR as a watch delivers it (so brief states are not missed)."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        self.versions: list[dict[str, Any]] = []
        self._proc = subprocess.Popen(
            [
                str(cluster.bin_dir / "kubectl"),
                "--kubeconfig",
                cluster.kubeconfig,
                "get",
                "mc",
                "-n",
                namespace,
                name,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        buf = ""
        decoder = json.JSONDecoder()
        for line in self._proc.stdout:
            buf += line
            try:
                doc, end = decoder.raw_decode(buf.strip())
            except ValueError:
                continue
            buf = ""
            self.versions.append(doc["object"])

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def test_sample_becomes_available_with_nodes(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace, reconcilers=2)
    cluster.kubectl(
        "apply", "-n", namespace, "-f", str(REPO / "deploy/samples/memcached-sample.yaml")
    )
    proc = cluster.wait_available(namespace, "memcached-sample")
    assert "condition met" in proc.stdout
    mc = cluster.get_mc(namespace, "memcached-sample")
    assert mc["status"]["readyReplicas"] == 3
    assert len(mc["status"]["nodes"]) == 3
    pods = {
        p["metadata"]["name"] for p in cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    }
    assert set(mc["status"]["nodes"]) == pods
    assert mc["status"]["observedGeneration"] == mc["metadata"]["generation"]
    for type_ in ("Available", "Progressing", "Degraded"):
        c = condition(mc, type_)
        assert c["observedGeneration"] == mc["metadata"]["generation"]
        assert c["reason"][:1].isupper() and " " not in c["reason"]
    assert condition(mc, "Degraded")["status"] == "False"
    out = cluster.kubectl("get", "mc", "-n", namespace, "memcached-sample").stdout
    assert out.splitlines()[1].split()[1:4] == ["3", "3", "True"], out


def test_scale_goes_through_progressing_to_available(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace, reconcilers=2)
    # Pods of this image take 3 s to become ready (kwok stage), as real ones do, so the
    # rollout lasts long enough to be seen.
    cluster.apply_memcached(namespace, "memcached-sample", {"size": 3, "image": SLOW_READY_IMAGE})
    cluster.wait_available(namespace, "memcached-sample")
    available_since = condition(cluster.get_mc(namespace, "memcached-sample"), "Available")
    recorder = StatusRecorder(cluster, namespace, "memcached-sample")
    try:
        wait_for(lambda: recorder.versions, timeout=30, what="the watch's first version")
        cluster.kubectl("scale", "-n", namespace, "mc/memcached-sample", "--replicas=5")
        wait_for(
            lambda: (
                (mc := cluster.get_mc(namespace, "memcached-sample"))
                and mc["status"].get("readyReplicas") == 5
                and condition(mc, "Available").get("status") == "True"
                and len(mc["status"]["nodes"]) == 5
                and condition(mc, "Available").get("observedGeneration")
                == mc["metadata"]["generation"]
            ),
            timeout=90,
            what="Available with 5 ready replicas",
        )
    finally:
        recorder.close()
    generation = cluster.get_mc(namespace, "memcached-sample")["metadata"]["generation"]
    progressing = [
        v
        for v in recorder.versions
        if condition(v, "Progressing").get("status") == "True"
        and condition(v, "Progressing").get("observedGeneration") == generation
    ]
    assert progressing, "the scale was never reported as Progressing"
    final = cluster.get_mc(namespace, "memcached-sample")
    assert condition(final, "Progressing")["status"] == "False"
    assert condition(final, "Progressing")["reason"] == "RolloutComplete"
    events = cluster.kubectl_json("get", "events.events.k8s.io", "-n", namespace)["items"]
    assert any(e.get("regarding", {}).get("name") == "memcached-sample" for e in events)
    # Available never flipped while scaling up, so its lastTransitionTime is unchanged... or it
    # flipped and came back, in which case it must be later. Either way it is not earlier.
    assert (
        condition(final, "Available")["lastTransitionTime"] >= available_since["lastTransitionTime"]
    )


def test_pods_that_never_become_ready_exceed_the_progress_deadline(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace, reconcilers=2, PROGRESS_DEADLINE_SECONDS="8")
    cluster.apply_memcached(namespace, "stuck", {"size": 2, "image": NEVER_READY_IMAGE})
    mc = cluster.wait_conditions(
        namespace,
        "stuck",
        reasons={"Progressing": "ProgressDeadlineExceeded"},
        timeout=120,
        what="Progressing=False ProgressDeadlineExceeded",
    )
    assert condition(mc, "Progressing")["status"] == "False"
    assert condition(mc, "Available")["status"] == "False"
    assert mc["status"]["readyReplicas"] == 0 and mc["status"]["nodes"] == []
    describe = wait_for(
        lambda: (
            (d := cluster.kubectl("describe", "mc", "-n", namespace, "stuck").stdout)
            and "ProgressDeadlineExceeded" in d
            and d
        ),
        timeout=30,
        what="an Event about the deadline in kubectl describe",
    )
    assert "Warning" in describe


def test_ownership_conflict_is_degraded_until_fixed(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace, reconcilers=2, RESYNC_PERIOD="3")
    cluster.kubectl("create", "deployment", "taken", "-n", namespace, "--image=nginx")
    cluster.apply_memcached(namespace, "taken", {"size": 1})
    mc = cluster.wait_conditions(
        namespace, "taken", Degraded="True", timeout=60, what="Degraded=True"
    )
    degraded = condition(mc, "Degraded")
    assert degraded["reason"] == "OwnershipConflict"
    assert "already exists" in degraded["message"]
    image = cluster.kubectl_json("get", "deployment", "-n", namespace, "taken")["spec"]["template"][
        "spec"
    ]["containers"][0]["image"]
    assert image == "nginx", "the operator took over a Deployment it does not own"

    cluster.kubectl("delete", "deployment", "-n", namespace, "taken")
    cluster.wait_conditions(
        namespace,
        "taken",
        Degraded="False",
        Available="True",
        what="Degraded to clear after the conflicting Deployment is removed",
    )


def _status_writes_by_name(cluster: Cluster, namespace: str) -> dict[str, int]:
    """Status writes per Memcached of the namespace, from the API server's audit log."""
    spans = status_write_spans(cluster.layout.state_dir / "logs" / "audit.log", namespace)
    return {name: len(writes) for name, writes in spans.items()}


def _status_writes(cluster: Cluster, namespace: str) -> int:
    return sum(_status_writes_by_name(cluster, namespace).values())


def test_no_status_writes_without_changes(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace, reconcilers=2, RESYNC_PERIOD="10")
    cluster.kubectl(
        "apply", "-n", namespace, "-f", str(REPO / "deploy/samples/memcached-sample.yaml")
    )
    cluster.wait_available(namespace, "memcached-sample")
    wait_requests_handled(cluster.nats_url, namespace)  # the rollout's last writes done...
    cluster.audit_log_caught_up()  # ... and in the audit log
    before = _status_writes(cluster, namespace)
    assert before >= 1
    # The scenario itself: a minute without changes, in which six resyncs each reconcile and
    # refresh the status.
    time.sleep(60)
    cluster.audit_log_caught_up()
    after = _status_writes(cluster, namespace)
    assert after == before, f"{after - before} status writes in 60 s without any change"


def test_a_new_memcached_costs_few_status_writes_and_one_event(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    """A healthy new CR goes from "rolling out" to Available: the status shows both steps, and
    `kubectl describe` one Normal Event for reaching Available — not a write per intermediate
    step of the Deployment and its pod, nor Warnings for the not-yet states every CR starts in."""
    service_procs.pipeline(namespace, reconcilers=2)
    names = [f"frugal-{i}" for i in range(5)]
    for name in names:
        cluster.apply_memcached(namespace, name, {"size": 1})
    for name in names:
        cluster.wait_available(namespace, name)
    wait_requests_handled(cluster.nats_url, namespace)
    cluster.audit_log_caught_up()
    writes = _status_writes_by_name(cluster, namespace)
    # Two steps to show (rolling out, Available); a third write is allowed for a Deployment
    # message that changed in between. Each pod, Deployment and outcome event used to be one.
    assert all(1 <= writes.get(name, 0) <= 3 for name in names), writes
    events = cluster.kubectl_json("get", "events.events.k8s.io", "-n", namespace)["items"]
    ours = [e for e in events if e.get("reportingController") == "memcached-operator/status"]
    per_cr = {
        name: [(e["type"], e["reason"]) for e in ours if e["regarding"]["name"] == name]
        for name in names
    }
    assert all(v == [("Normal", "AllReplicasReady")] for v in per_cr.values()), per_cr


def test_nodes_follow_a_replaced_pod(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    """A pod of an Available CR is deleted and its ReplicaSet replaces it: `nodes` ends naming
    exactly the pods that run, with the replacement and without the deleted one."""
    service_procs.pipeline(namespace, reconcilers=2)
    cluster.apply_memcached(namespace, "replaced", {"size": 2})
    cluster.wait_available(namespace, "replaced")

    def pod_names() -> set[str]:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
        return {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}

    before = wait_for(
        lambda: (
            (n := pod_names())
            and set(cluster.get_mc(namespace, "replaced")["status"]["nodes"]) == n
            and n
        ),
        timeout=60,
        what="nodes to name the two pods",
    )
    victim = sorted(before)[0]
    cluster.kubectl("delete", "pod", "-n", namespace, victim, "--wait=false")

    def settled() -> bool:
        mc = cluster.get_mc(namespace, "replaced")
        now = pod_names()
        return (
            victim not in now
            and len(now) == 2
            and set(mc["status"].get("nodes") or []) == now
            and mc["status"].get("readyReplicas") == 2
            and condition(mc, "Available").get("status") == "True"
        )

    wait_for(settled, timeout=90, what="nodes to name the replacement, not the deleted pod")
