"""Issue 19 acceptance: the objects a Memcached gets are ones a real cluster admits and an
application can use, checked on the session's real API server, controller-manager and kwok."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.support import Services, condition, wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}"
    )["items"]
    return list(items)


def available_or_degraded(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The CR once it is Available or Degraded: a refusal fails the test with the API's
    message rather than a timeout."""
    mc = wait_for(
        lambda: (
            (m := cluster.get_mc(namespace, name))
            and (
                condition(m, "Available").get("status") == "True"
                or condition(m, "Degraded").get("status") == "True"
            )
            and m
        ),
        timeout=90,
        what=f"{name} Available or Degraded",
    )
    assert condition(mc, "Degraded").get("status") != "True", condition(mc, "Degraded")
    return dict(mc)


# Every option of the spec that shapes the pods, so every combination the operator creates is
# admitted (options added by later parts of the issue belong here too).
RESTRICTED_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {"size": 2}),
    (
        "resources",
        {
            "size": 2,
            "resources": {
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"cpu": 1, "memory": "128Mi"},
            },
        },
    ),
    ("monitored", {"size": 2, "monitoring": {"enabled": True}}),
    (
        "tuned",
        {
            "size": 1,
            "memoryMB": 96,
            "maxConnections": 4096,
            "maxItemSize": 2 << 20,
            "resources": {"limits": {"memory": "128Mi"}},
        },
    ),
]


def test_a_namespace_enforcing_restricted_admits_every_pod(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    service_procs.pipeline(namespace)
    for name, spec in RESTRICTED_SPECS:
        cluster.apply_memcached(namespace, name, spec)
    for name, spec in RESTRICTED_SPECS:
        mc = available_or_degraded(cluster, namespace, name)
        assert mc["status"]["readyReplicas"] == spec["size"]
        assert len(pods(cluster, namespace, name)) == spec["size"]
    refused = [
        e
        for e in cluster.kubectl_json("get", "events", "-n", namespace)["items"]
        if e.get("reason") == "FailedCreate"
    ]
    assert refused == [], [e.get("message") for e in refused]

    # Monitoring turned off: the exporter and its annotations go (matches() notices them).
    cluster.apply_memcached(namespace, "monitored", {"size": 2})

    def unmonitored() -> bool:
        template = cluster.kubectl_json("get", "deployment", "-n", namespace, "monitored")["spec"][
            "template"
        ]
        names = [c["name"] for c in template["spec"]["containers"]]
        annotations = template["metadata"].get("annotations") or {}
        return names == ["memcached"] and "prometheus.io/scrape" not in annotations

    wait_for(unmonitored, timeout=30, what="the exporter to be removed")


def test_pods_spread_over_the_nodes(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    nodes = [n["metadata"]["name"] for n in cluster.kubectl_json("get", "nodes")["items"]]
    assert len(nodes) >= 2, nodes
    service_procs.pipeline(namespace)
    size = 2 * len(nodes)
    cluster.apply_memcached(namespace, "spread", {"size": size})
    available_or_degraded(cluster, namespace, "spread")
    placed = pods(cluster, namespace, "spread")
    per_node = {node: 0 for node in nodes}
    for pod in placed:
        per_node[pod["spec"]["nodeName"]] += 1
        # The scheduler's default spreading would do this much too; the constraint is what
        # keeps it when the defaults are off or other pods weigh on the nodes.
        (spread,) = pod["spec"]["topologySpreadConstraints"]
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert sorted(per_node.values()) == [2] * len(nodes), per_node
    deployment = cluster.kubectl_json("get", "deployment", "-n", namespace, "spread")
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def get_or_none(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl(
        "get", kind, "-n", namespace, name, "-o", "json", "--show-managed-fields", check=False
    )
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    return dict(json.loads(proc.stdout))


def owned_by_cr(obj: dict[str, Any], mc: dict[str, Any]) -> bool:
    return any(
        ref.get("controller") and ref.get("uid") == mc["metadata"]["uid"]
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def test_a_disruption_budget_guards_two_or_more_pods_and_follows_the_size(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace)
    cluster.apply_memcached(namespace, "guarded", {"size": 3})
    mc = available_or_degraded(cluster, namespace, "guarded")
    pdb = wait_for(
        lambda: get_or_none(cluster, namespace, "pdb", "guarded"),
        timeout=30,
        what="the PodDisruptionBudget",
    )
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == {"matchLabels": pdb["metadata"]["labels"]}
    assert owned_by_cr(pdb, mc)
    managers = {
        f["manager"]: f["operation"]
        for f in pdb["metadata"]["managedFields"]
        if f.get("subresource") != "status"  # the disruption controller's
    }
    assert managers == {"memcached-operator": "Apply"}, managers

    # Deleted by someone: re-created.
    cluster.kubectl("delete", "pdb", "-n", namespace, "guarded")
    recreated = wait_for(
        lambda: get_or_none(cluster, namespace, "pdb", "guarded"),
        timeout=30,
        what="the deleted PodDisruptionBudget to be re-created",
    )
    assert recreated["metadata"]["uid"] != pdb["metadata"]["uid"]
    # Drifted: put back.
    cluster.kubectl(
        "patch", "pdb", "-n", namespace, "guarded", "--type=merge", "-p",
        '{"spec": {"maxUnavailable": 3}}',
    )  # fmt: skip
    wait_for(
        lambda: (
            (get_or_none(cluster, namespace, "pdb", "guarded") or {})
            .get("spec", {})
            .get("maxUnavailable")
            == 1
        ),
        timeout=30,
        what="the drifted PodDisruptionBudget to be corrected",
    )
    # Below two pods a budget of one disruption would allow them all: deleted.
    cluster.apply_memcached(namespace, "guarded", {"size": 1})
    wait_for(
        lambda: get_or_none(cluster, namespace, "pdb", "guarded") is None,
        timeout=30,
        what="the PodDisruptionBudget of a one-pod CR to be deleted",
    )
    cluster.apply_memcached(namespace, "guarded", {"size": 2})
    wait_for(
        lambda: get_or_none(cluster, namespace, "pdb", "guarded"),
        timeout=30,
        what="the PodDisruptionBudget back at two pods",
    )
    # Deleting the CR collects it with the Deployment.
    cluster.kubectl("delete", "mc", "-n", namespace, "guarded")
    wait_for(
        lambda: (
            get_or_none(cluster, namespace, "pdb", "guarded") is None
            and get_or_none(cluster, namespace, "deployment", "guarded") is None
        ),
        timeout=60,
        what="the garbage collector to remove the owned objects",
    )


def test_a_foreign_disruption_budget_is_an_ownership_conflict_and_left_alone(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace)
    cluster.kubectl(
        "create", "poddisruptionbudget", "taken", "-n", namespace,
        "--selector=app=other", "--min-available=1",
    )  # fmt: skip
    cluster.apply_memcached(namespace, "taken", {"size": 2})
    mc = cluster.wait_conditions(
        namespace, "taken", Degraded="True", timeout=60, what="Degraded=True"
    )
    degraded = condition(mc, "Degraded")
    assert degraded["reason"] == "OwnershipConflict"
    assert "PodDisruptionBudget" in degraded["message"], degraded
    pdb = get_or_none(cluster, namespace, "pdb", "taken")
    assert pdb is not None
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": {"app": "other"}}}
    assert not pdb["metadata"].get("ownerReferences")


def test_a_headless_service_selects_the_pods_and_is_kept_as_desired(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace)
    cluster.apply_memcached(namespace, "pool", {"size": 2})
    mc = available_or_degraded(cluster, namespace, "pool")
    service = wait_for(
        lambda: get_or_none(cluster, namespace, "service", "pool"),
        timeout=30,
        what="the Service",
    )
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [
        {"name": "memcache", "port": 11211, "targetPort": 11211, "protocol": "TCP"}
    ]
    selected = cluster.kubectl_json(
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items()),
    )["items"]
    assert {p["metadata"]["name"] for p in selected} == {
        p["metadata"]["name"] for p in pods(cluster, namespace, "pool")
    }
    assert len(selected) == 2
    assert owned_by_cr(service, mc)
    # The pool a client shards over, from the CR: each ready pod's IP and port.
    mc = wait_for(
        lambda: (
            (m := cluster.get_mc(namespace, "pool"))
            and len(m["status"].get("endpoints") or []) == 2
            and m
        ),
        timeout=30,
        what="two endpoints in the status",
    )
    assert mc["status"]["endpoints"] == sorted(f"{p['status']['podIP']}:11211" for p in selected)
    assert mc["status"]["endpointCount"] == 2
    # The client snippet of deploy/samples/memcached_client.py, on the status just read.
    client = runpy.run_path(str(REPO / "deploy/samples/memcached_client.py"))
    assert client["servers_from_status"](mc) == [
        (e.rpartition(":")[0], 11211) for e in mc["status"]["endpoints"]
    ]
    out = cluster.kubectl("get", "mc", "-n", namespace, "pool").stdout
    header, row = out.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "SIZE", "READY", "AVAILABLE", "ENDPOINTS"], out
    assert row.split()[4] == "2", out

    cluster.kubectl(
        "patch", "service", "-n", namespace, "pool", "--type=merge", "-p",
        '{"spec": {"selector": {"app.kubernetes.io/instance": "elsewhere"}}}',
    )  # fmt: skip
    wait_for(
        lambda: (
            (get_or_none(cluster, namespace, "service", "pool") or {})
            .get("spec", {})
            .get("selector")
            == service["spec"]["selector"]
        ),
        timeout=30,
        what="the drifted Service selector to be corrected",
    )
    cluster.kubectl("delete", "service", "-n", namespace, "pool")
    recreated = wait_for(
        lambda: get_or_none(cluster, namespace, "service", "pool"),
        timeout=30,
        what="the deleted Service to be re-created",
    )
    assert recreated["metadata"]["uid"] != service["metadata"]["uid"]
    cluster.kubectl("delete", "mc", "-n", namespace, "pool")
    wait_for(
        lambda: get_or_none(cluster, namespace, "service", "pool") is None,
        timeout=60,
        what="the garbage collector to remove the Service",
    )


def test_a_foreign_service_is_an_ownership_conflict_and_never_overwritten(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace)
    cluster.kubectl("create", "service", "clusterip", "taken", "-n", namespace, "--tcp=80")
    before = get_or_none(cluster, namespace, "service", "taken")
    assert before is not None
    cluster.apply_memcached(namespace, "taken", {"size": 1})
    mc = cluster.wait_conditions(
        namespace, "taken", Degraded="True", timeout=60, what="Degraded=True"
    )
    degraded = condition(mc, "Degraded")
    assert degraded["reason"] == "OwnershipConflict"
    assert f"Service {namespace}/taken already exists" in degraded["message"], degraded
    after = get_or_none(cluster, namespace, "service", "taken")
    assert after is not None
    assert after["spec"] == before["spec"]
    assert after["metadata"].get("labels") == before["metadata"].get("labels")
    assert not after["metadata"].get("ownerReferences")


def memcached_command(cluster: Cluster, namespace: str, name: str) -> list[str]:
    deployment = cluster.kubectl_json("get", "deployment", "-n", namespace, name)
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["command"])


def test_memory_connections_and_item_size_reach_memcached_and_changes_converge(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    service_procs.pipeline(namespace)
    limit = {"resources": {"limits": {"memory": "256Mi"}}}
    cluster.apply_memcached(namespace, "sized", {"size": 1, **limit})
    available_or_degraded(cluster, namespace, "sized")
    # 256 MiB less 10 % (26 MiB), the default 1024 connections and 1 MiB items.
    assert memcached_command(cluster, namespace, "sized")[1:7] == [
        "-m", "230", "-c", "1024", "-I", "1024k",
    ]  # fmt: skip
    tuned = {"memoryMB": 200, "maxConnections": 512, "maxItemSize": 4 << 20}
    cluster.apply_memcached(namespace, "sized", {"size": 1, **limit, **tuned})
    wait_for(
        lambda: (
            memcached_command(cluster, namespace, "sized")[1:7]
            == ["-m", "200", "-c", "512", "-I", "4096k"]
        ),
        timeout=30,
        what="the new settings in the memcached command",
    )
