"""Issue 7 acceptance: deploy/ installs on a real API server with least-privilege accounts.

Every overlay passes a server-side dry run (built-in kinds, and the KEDA and Istio kinds
against CRDs with their schemas from tests/fixtures/), meets the `restricted` Pod Security
level, and the service accounts, applied for real, can do exactly what their services need:
the three services, each running with only its own account's token and its own NATS user,
converge a Memcached and write its status and Events.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.local import nats as local_nats
from deploy.local.layout import write_kubeconfig
from memcached_operator.admin.nats_auth import USERS
from memcached_operator.admin.nats_conf import authorization_block, server_environment
from tests.conftest import Cluster
from tests.support import services, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
FIXTURE_CRDS = REPO / "tests" / "fixtures" / "keda-istio-crds.yaml"
OTEL_COLLECTOR = DEPLOY / "observability" / "otel-collector.yaml"
KUSTOMIZATIONS = ("base", "overlays/local", "overlays/production")
NAMESPACE = "memcached-operator"
ACCOUNT_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")
SERVICES = ("watcher", "reconciler", "status")


def build(cluster: Cluster, path: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("kustomize", str(DEPLOY / path)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def as_list(docs: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


@pytest.fixture(scope="module")
def accounts(cluster: Cluster) -> Iterator[list[dict[str, Any]]]:
    """The KEDA/Istio fixture CRDs, the operator's namespace and its accounts and roles
    (applied for real), and the observability namespace; all removed afterwards."""
    cluster.kubectl("apply", "-f", str(FIXTURE_CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(FIXTURE_CRDS))
    docs = [d for d in build(cluster, "overlays/production") if d["kind"] in ACCOUNT_KINDS]
    cluster.kubectl("apply", "-f", "-", input_=as_list(docs))
    cluster.kubectl("create", "namespace", "observability", check=False)
    yield docs
    for doc in docs:
        if doc["kind"].startswith("Cluster"):
            cluster.kubectl("delete", doc["kind"], doc["metadata"]["name"], check=False)
    for namespace in (NAMESPACE, "observability"):
        # Waited for: the next test that applies the manifests must not meet a namespace
        # that is still terminating (it refuses new content).
        cluster.kubectl("delete", "namespace", namespace, "--timeout=120s", check=False)
    cluster.kubectl("delete", "-f", str(FIXTURE_CRDS), "--wait=false", check=False)


def resource_name(doc: dict[str, Any]) -> str:
    """How kubectl names an object in its output: kind[.group]/name."""
    group = doc["apiVersion"].rpartition("/")[0]
    kind = doc["kind"].lower()
    return (
        f"{kind}.{group}/{doc['metadata']['name']}"
        if group
        else f"{kind}/{doc['metadata']['name']}"
    )


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_server_dry_run_accepts_every_object(
    cluster: Cluster, accounts: list[dict[str, Any]], path: str
) -> None:
    docs = build(cluster, path)
    proc = cluster.kubectl(
        "apply", "--dry-run=server", "-k", str(DEPLOY / path), check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "PodSecurity" not in proc.stderr, proc.stderr
    accepted = {line.split()[0] for line in proc.stdout.splitlines() if "(server dry run)" in line}
    assert {resource_name(d) for d in docs} <= accepted, proc.stdout
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "PodDisruptionBudget", "ConfigMap"} <= kinds
    if path == "overlays/production":
        assert {"ScaledObject", "PeerAuthentication", "DestinationRule"} <= kinds


def test_otel_collector_sample_passes_a_server_dry_run(
    cluster: Cluster, accounts: list[dict[str, Any]]
) -> None:
    proc = cluster.kubectl(
        "apply", "--dry-run=server", "-f", str(OTEL_COLLECTOR), check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "deployment.apps/otel-collector created (server dry run)" in proc.stdout


def test_misspelt_keda_and_istio_fields_are_refused(
    cluster: Cluster, accounts: list[dict[str, Any]]
) -> None:
    """The fixture CRDs really check the production objects (they are not open schemas)."""
    docs = {d["kind"]: d for d in build(cluster, "overlays/production")}
    broken = [
        {**docs["ScaledObject"], "spec": {**docs["ScaledObject"]["spec"], "minReplicas": 3}},
        {
            **docs["PeerAuthentication"],
            "spec": {"mtls": {"mode": "STRICTEST"}},
        },
    ]
    for doc in broken:
        proc = cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", input_=json.dumps(doc), check=False
        )
        assert proc.returncode != 0, f"{doc['kind']} was accepted: {proc.stdout}"


def test_nats_configuration_is_the_generated_one_and_valid(cluster: Cluster) -> None:
    """The ConfigMap holds exactly the users of services/admin/nats_auth.py, and the real
    nats-server accepts the configuration with the environment the StatefulSet gives it."""
    docs = build(cluster, "base")
    (config_map,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "auth.conf" in (d.get("data") or {})
    ]
    assert config_map["metadata"]["name"].startswith("nats-config")
    assert config_map["data"]["auth.conf"] == authorization_block()
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    for user in USERS:
        # The servers read the hashes only; the passwords (nats-users) are the clients'.
        ref = env[user.password_variable]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("nats-server-auth", user.password_variable)
    proc = subprocess.run(
        [local_nats.binary(), "-t", "-c", str(DEPLOY / "base" / "nats" / "nats.conf")],
        env={
            **os.environ,
            "POD_NAME": "nats-0",
            **server_environment({u.name: f"pw{u.name}" for u in USERS}, cost=4),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout


def can_i(cluster: Cluster, account: str, verb: str, resource: str) -> bool:
    """`kubectl auth can-i` in all namespaces; `resource` may name a subresource (x/status)."""
    resource, _, subresource = resource.partition("/")
    proc = cluster.kubectl(
        "auth",
        "can-i",
        verb,
        resource,
        *([f"--subresource={subresource}"] if subresource else []),
        "--all-namespaces",
        f"--as=system:serviceaccount:{NAMESPACE}:{account}",
        check=False,
        timeout=30,
    )
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


MEMCACHEDS = "memcacheds.cache.example.com"
STATUS = "memcacheds.cache.example.com/status"
DEPLOYMENTS = "deployments.apps"
PDBS = "poddisruptionbudgets.policy"
# What each service's code calls (tests/e2e/test_rbac.py derives it from the audit log of a run
# and keeps the roles to it); the "can-i" view of the same, plus what each must not do.
NEEDS = {
    "watcher": [
        (v, r)
        for r in (MEMCACHEDS, DEPLOYMENTS, "pods", PDBS, "services")
        for v in ("list", "watch")
    ],
    "reconciler": [
        ("get", MEMCACHEDS),
        *[(v, DEPLOYMENTS) for v in ("get", "create", "patch")],
        *[(v, PDBS) for v in ("get", "create", "patch", "delete")],
        *[(v, "services") for v in ("get", "create", "patch")],
    ],
    "status": [
        ("get", MEMCACHEDS),
        ("patch", STATUS),
        ("create", "events.events.k8s.io"),
        ("list", "pods"),
    ],
}
FORBIDDEN = {
    "watcher": [
        *[("get", r) for r in (MEMCACHEDS, DEPLOYMENTS, "pods")],
        ("create", DEPLOYMENTS),
        ("patch", DEPLOYMENTS),
        ("patch", STATUS),
        ("create", "events.events.k8s.io"),
        ("update", MEMCACHEDS),
        *[(v, PDBS) for v in ("get", "patch", "delete")],
        *[(v, "services") for v in ("get", "patch", "delete")],
    ],
    "reconciler": [
        *[(v, MEMCACHEDS) for v in ("list", "watch", "delete", "update", "patch")],
        *[(v, DEPLOYMENTS) for v in ("list", "watch", "update", "delete")],
        *[(v, PDBS) for v in ("list", "watch", "update")],
        *[(v, "services") for v in ("list", "watch", "update", "delete")],
        ("patch", STATUS),
        ("list", "pods"),
        ("create", "events.events.k8s.io"),
    ],
    "status": [
        *[(v, MEMCACHEDS) for v in ("list", "watch", "patch", "delete")],
        ("update", STATUS),
        *[(v, DEPLOYMENTS) for v in ("get", "list", "watch", "create", "patch")],
        *[(v, "pods") for v in ("get", "watch", "delete")],
        *[(v, PDBS) for v in ("list", "patch", "delete")],
        *[(v, "services") for v in ("get", "list", "patch")],
        *[(v, "events") for v in ("create", "patch")],
        ("patch", "events.events.k8s.io"),
    ],
}
EVERYONE_FORBIDDEN = [
    *[(v, "secrets") for v in ("get", "list", "watch")],
    ("create", "pods"),
    ("get", "configmaps"),
    ("create", "serviceaccounts/token"),
    ("create", MEMCACHEDS),
    ("*", "*"),
]


@pytest.mark.parametrize("account", SERVICES)
def test_each_account_can_do_what_its_service_needs(
    cluster: Cluster, accounts: list[dict[str, Any]], account: str
) -> None:
    missing = [(v, r) for v, r in NEEDS[account] if not can_i(cluster, account, v, r)]
    assert not missing, f"{account} lacks {missing}"


@pytest.mark.parametrize("account", SERVICES)
def test_each_account_cannot_do_anything_else(
    cluster: Cluster, accounts: list[dict[str, Any]], account: str
) -> None:
    allowed = [
        (v, r)
        for v, r in [*FORBIDDEN[account], *EVERYONE_FORBIDDEN]
        if can_i(cluster, account, v, r)
    ]
    assert not allowed, f"{account} may {allowed}"


def service_account_kubeconfig(cluster: Cluster, account: str, path: Path) -> str:
    token = cluster.kubectl(
        "create", "token", account, "-n", NAMESPACE, "--duration=1h"
    ).stdout.strip()
    return str(write_kubeconfig(cluster.layout, path, user=account, token=token))


def test_services_converge_with_only_their_own_rights(
    cluster: Cluster, accounts: list[dict[str, Any]], namespace: str, tmp_path: Path
) -> None:
    """Each service with its own ServiceAccount token and its own NATS user (tests.support
    gives every service its user) converges a Memcached: Deployment, status and Events."""
    configs = {
        a: service_account_kubeconfig(cluster, a, tmp_path / f"{a}.kubeconfig") for a in SERVICES
    }
    with services(tmp_path / "services", cluster.env()) as svc:
        svc.start(
            "watcher", "--namespaces", namespace, name="watcher", KUBECONFIG=configs["watcher"]
        )
        svc.start("reconciler", name="reconciler", KUBECONFIG=configs["reconciler"])
        svc.start("status", name="status", KUBECONFIG=configs["status"])
        cluster.apply_memcached(namespace, "least-privilege", {"size": 2})

        def available() -> dict[str, Any] | None:
            obj = cluster.kubectl_json("get", "mc", "-n", namespace, "least-privilege")
            status = obj.get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            return status if conditions.get("Available") == "True" else None

        try:
            status = wait_for(available, timeout=90, what="the Memcached to become Available")
        finally:
            logs = {name: svc.log(name) for name in SERVICES}
        assert status["readyReplicas"] == 2
        events = cluster.kubectl_json("get", "events.events.k8s.io", "-n", namespace)["items"]
        assert any(e["regarding"]["name"] == "least-privilege" for e in events), events
        for name, log in logs.items():
            assert "forbidden" not in log.lower(), f"{name}: {log[-3000:]}"
            assert "permissions violation" not in log.lower(), f"{name}: {log[-3000:]}"


def test_the_namespaced_example_has_roles_in_its_namespaces_and_no_cluster_roles(
    cluster: Cluster,
) -> None:
    docs = build(cluster, "overlays/namespaced-example")
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {
        (d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Role"
    }
    bound = {
        (d["metadata"]["namespace"], d["subjects"][0]["name"])
        for d in docs
        if d["kind"] == "RoleBinding"
    }
    assert roles == {
        (ns, f"memcached-operator-{s}") for ns in ("team-a", "team-b") for s in SERVICES
    }
    assert bound == {(ns, s) for ns in ("team-a", "team-b") for s in SERVICES}
    watcher = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "watcher"
    )
    env = {
        e["name"]: e.get("value")
        for e in watcher["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["WATCH_NAMESPACES"] == "team-a,team-b"
