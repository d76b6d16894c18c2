"""Issue 19 acceptance: the objects a Memcached gets are ones a real cluster admits and an
application can use, checked on the session's real API server, controller-manager and kwok."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Cluster
from tests.support import Services, wait_for

pytestmark = pytest.mark.e2e


def pipeline(services: Services, namespace: str, **env: str) -> None:
    services.start("watcher", "--namespaces", namespace, name="watcher", **env)
    services.start("reconciler", name="reconciler-0", **env)
    services.start("status", name="status-0", **env)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def get_mc(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "mc", "-n", namespace, name))


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
            (m := get_mc(cluster, namespace, name))
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
    pipeline(service_procs, namespace)
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
