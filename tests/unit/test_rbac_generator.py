"""`memcached-operator rbac`: namespaced Roles with exactly the rules of deploy/base's
ClusterRoles, and the committed example generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from memcached_operator.admin.rbac import SERVICES, cluster_roles, namespaced_roles

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy/overlays/namespaced-example/roles.yaml"


def test_each_service_gets_its_cluster_roles_rules_in_each_namespace() -> None:
    docs = namespaced_roles(["a", "b"])
    rules = {s: r["rules"] for s, r in cluster_roles().items()}
    assert set(rules) == set(SERVICES)
    roles = [d for d in docs if d["kind"] == "Role"]
    assert len(roles) == 2 * len(SERVICES)
    for role in roles:
        service = role["metadata"]["labels"]["app.kubernetes.io/component"]
        assert role["rules"] == rules[service]
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": binding["metadata"]["labels"]["app.kubernetes.io/component"],
                "namespace": "memcached-operator",
            }
        ]


def test_the_committed_example_is_the_generators_output() -> None:
    committed = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert committed == namespaced_roles(["team-a", "team-b"]), (
        "regenerate: memcached-operator rbac --namespaces team-a,team-b "
        "> deploy/overlays/namespaced-example/roles.yaml"
    )
