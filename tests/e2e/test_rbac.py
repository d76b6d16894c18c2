"""Issue 16: each service's Kubernetes role grants what its code calls, and nothing more.

The services run as their ServiceAccounts' users (a client certificate each, see
``deploy.local.layout.service_kubeconfig``) with the ClusterRoles and bindings of
``deploy/base`` applied as they are, through a run that takes every path that reaches the API
server: create, scale, drift, a Deployment name owned by someone else, a pod that is not
ready, a PodDisruptionBudget created and deleted again, a PodDisruptionBudget and a Service
of a CR's name owned by someone else, deletion. The API server's audit log then says which
(verb, group, resource) each identity used; the test asserts that every grant of each role
was used, and that no request was refused (a call the role lacks would be a 403).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from deploy.local.layout import (
    OPERATOR_NAMESPACE,
    SERVICES,
    service_account_user,
    service_kubeconfig,
)
from memcached_operator.admin.rbac import namespaced_roles
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.workqueue.queue import enqueue
from memcached_operator.shared.workqueue.types import ORIGIN
from tests.conftest import Cluster
from tests.support import Services, wait_for, wait_requests_handled

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# Grants no request shows in the audit log: admission checks a Deployment's blockOwnerDeletion
# owner reference against "update memcacheds/finalizers" where
# OwnerReferencesPermissionEnforcement is on (OpenShift, hardened clusters), and a server-side
# apply that creates its object is authorized as a create too, though logged as a patch
# (without the grant, no Deployment is ever created: checked by hand).
NOT_IN_AUDIT_LOG = {
    ("reconciler", "cache.example.com", "memcacheds/finalizers", "update"),
    ("reconciler", "apps", "deployments", "create"),
    ("reconciler", "policy", "poddisruptionbudgets", "create"),
    ("reconciler", "", "services", "create"),
}
# Fallbacks a run takes only when the event stream lags (a pod index that has not caught up
# within its wait): granted, named here with the code that calls them.
FALLBACKS = {
    ("status", "", "pods", "list"),  # services/status/service.py StatusRefresher._ready_pods
}
Grant = tuple[str, str, str]  # (api group, resource[/subresource], verb)


def _rbac_documents() -> list[dict[str, Any]]:
    docs = []
    for service in SERVICES:
        for doc in yaml.safe_load_all((REPO / "deploy/base" / f"{service}.yaml").read_text()):
            if doc and doc["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
                if doc["kind"] == "ServiceAccount":
                    doc["metadata"]["namespace"] = OPERATOR_NAMESPACE
                for subject in doc.get("subjects") or []:
                    subject["namespace"] = OPERATOR_NAMESPACE
                docs.append(doc)
    return docs


def _granted() -> dict[str, set[Grant]]:
    out: dict[str, set[Grant]] = {}
    for doc in _rbac_documents():
        if doc["kind"] != "ClusterRole":
            continue
        service = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        out[service] = {
            (group, resource, verb)
            for rule in doc["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
    return out


def _used(cluster: Cluster) -> tuple[dict[str, set[Grant]], list[str]]:
    """What each service's identity did, and the requests refused (403)."""
    users = {service_account_user(s): s for s in SERVICES}
    used: dict[str, set[Grant]] = defaultdict(set)
    refused: list[str] = []
    log = cluster.layout.state_dir / "logs" / "audit.log"
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        service = users.get((entry.get("user") or {}).get("username", ""))
        ref = entry.get("objectRef")
        # A watch is logged when its response starts (it completes minutes later).
        if service is None or ref is None or entry.get("stage") == "Panic":
            continue
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource = f"{resource}/{ref['subresource']}"
        grant = (ref.get("apiGroup", ""), resource, entry["verb"])
        if (entry.get("responseStatus") or {}).get("code") == 403:
            refused.append(f"{service}: {grant}")
        else:
            used[service].add(grant)
    return used, refused


async def _request_unseen(cluster: Cluster, key: ObjectKey) -> None:
    nc = await nats.connect(cluster.nats_url)
    try:
        for controller in ("reconcile", "status"):
            await enqueue(nc.jetstream(), controller=controller, key=key, headers={ORIGIN: "test"})
    finally:
        await nc.close()


@pytest.fixture(params=["cluster", "namespaced"])
def roles(cluster: Cluster, namespace: str, request: pytest.FixtureRequest) -> Iterator[None]:
    """deploy/base's ServiceAccounts, ClusterRoles and bindings, applied as they are, or the
    same ServiceAccounts with the Roles `memcached-operator rbac --namespaces <ns>` makes for
    an operator that watches only the test's namespace; removed afterwards (and waited for:
    other tests apply the same manifests)."""
    objects = _rbac_documents()
    if request.param == "namespaced":
        objects = [d for d in objects if d["kind"] == "ServiceAccount"]
        objects += namespaced_roles([namespace], operator_namespace=OPERATOR_NAMESPACE)
    docs = yaml.safe_dump_all(objects)
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input_=docs)
    yield
    cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input_=docs, check=False)
    cluster.kubectl("delete", "namespace", OPERATOR_NAMESPACE, "--timeout=120s", check=False)


def test_each_role_grants_exactly_what_its_service_calls(
    cluster: Cluster, service_procs: Services, namespace: str, roles: None
) -> None:
    for service in SERVICES:
        kubeconfig = str(service_kubeconfig(cluster.layout, service))
        args = ("--namespaces", namespace) if service == "watcher" else ()
        service_procs.start(service, *args, name=service, KUBECONFIG=kubeconfig, RESYNC_PERIOD="5")

    # A CR through its whole life: created, Available, scaled, its Deployment drifted.
    cluster.apply_memcached(namespace, "cache", {"size": 1})
    cluster.wait_available(namespace, "cache", timeout=120)
    cluster.apply_memcached(namespace, "cache", {"size": 2})
    wait_for(
        lambda: (
            cluster.kubectl_json("get", "mc", "-n", namespace, "cache")["status"].get(
                "readyReplicas"
            )
            == 2
        ),
        timeout=90,
        what="the scaled CR to report 2 ready replicas",
    )
    cluster.kubectl("scale", "deployment", "-n", namespace, "cache", "--replicas=5")
    wait_for(
        lambda: (
            cluster.kubectl_json("get", "deployment", "-n", namespace, "cache")["spec"]["replicas"]
            == 2
        ),
        timeout=60,
        what="the drift to be corrected",
    )
    # A Deployment of the CR's name that someone else owns: OwnershipConflict.
    cluster.kubectl(
        "create", "deployment", "taken", "-n", namespace, "--image=registry.k8s.io/pause:3.10"
    )
    cluster.apply_memcached(namespace, "taken", {"size": 1})
    wait_for(
        lambda: any(
            c.get("reason") == "OwnershipConflict"
            for c in (
                cluster.kubectl_json("get", "mc", "-n", namespace, "taken").get("status") or {}
            ).get("conditions", [])
        ),
        timeout=90,
        what="the OwnershipConflict condition",
    )
    # A PodDisruptionBudget of a two-pod CR's name that someone else owns: OwnershipConflict.
    cluster.kubectl(
        "create",
        "poddisruptionbudget",
        "guarded",
        "-n",
        namespace,
        "--selector=app=other",
        "--max-unavailable=1",
    )
    cluster.apply_memcached(namespace, "guarded", {"size": 2})
    wait_for(
        lambda: any(
            c.get("reason") == "OwnershipConflict"
            for c in (
                cluster.kubectl_json("get", "mc", "-n", namespace, "guarded").get("status") or {}
            ).get("conditions", [])
        ),
        timeout=90,
        what="the OwnershipConflict condition of the PodDisruptionBudget",
    )
    # And a Service of a CR's name that someone else owns.
    cluster.kubectl("create", "service", "clusterip", "named", "-n", namespace, "--tcp=80")
    cluster.apply_memcached(namespace, "named", {"size": 1})
    wait_for(
        lambda: any(
            c.get("reason") == "OwnershipConflict"
            for c in (
                cluster.kubectl_json("get", "mc", "-n", namespace, "named").get("status") or {}
            ).get("conditions", [])
        ),
        timeout=90,
        what="the OwnershipConflict condition of the Service",
    )
    # Scaled below two pods, the CR's own budget is deleted.
    cluster.apply_memcached(namespace, "cache", {"size": 1})
    wait_for(
        lambda: (
            cluster.kubectl("get", "pdb", "-n", namespace, "cache", check=False).returncode != 0
        ),
        timeout=60,
        what="the PodDisruptionBudget of the CR scaled to one pod to be deleted",
    )
    # Requests for a CR the stream has never shown: both services ask the API server.
    resyncs = service_procs.log("watcher").count("resync requested")
    asyncio.run(_request_unseen(cluster, ObjectKey(namespace, "never-streamed")))
    cluster.kubectl("delete", "mc", "-n", namespace, "cache", "taken", "guarded", "named")
    # A resync after the deletions (the second to end from now: the first may have begun
    # before them), every request handled, and the calls in the audit log.
    wait_for(
        lambda: service_procs.log("watcher").count("resync requested") >= resyncs + 2,
        timeout=30,
        what="a resync after the deletions",
    )
    wait_requests_handled(cluster.nats_url, namespace)
    cluster.audit_log_caught_up()

    used, refused = _used(cluster)
    assert refused == [], f"requests the roles refused: {refused}"
    for service, grants in _granted().items():
        unused = {
            g
            for g in grants - used[service]
            if (service, g[0], g[1], g[2]) not in NOT_IN_AUDIT_LOG | FALLBACKS
        }
        assert not unused, f"the {service} role grants what the {service} never calls: {unused}"
