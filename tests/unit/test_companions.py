"""Unit tests of the objects a Memcached owns beside its Deployment (PDB and Service)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment, matches
from tests.unit.test_desired import UID, memcached

pytestmark = pytest.mark.unit


def test_a_budget_only_from_two_pods() -> None:
    assert desired_pdb(memcached(spec={"size": 0})) is None
    assert desired_pdb(memcached(spec={"size": 1})) is None
    pdb = desired_pdb(memcached(spec={"size": 2}))
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1
    deployment = desired_deployment(memcached(spec={"size": 2}))
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == UID


def test_the_service_is_headless_and_selects_the_deployments_pods() -> None:
    cr = memcached(spec={"size": 3})
    service = desired_service(cr)
    deployment = desired_deployment(cr)
    assert service["metadata"]["name"] == "cache"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"] == [
        {"name": "memcache", "port": 11211, "targetPort": 11211, "protocol": "TCP"}
    ]
    assert service["metadata"]["ownerReferences"][0]["controller"] is True


def served_service(desired: dict[str, Any]) -> dict[str, Any]:
    live = copy.deepcopy(desired)
    live["metadata"]["uid"] = "1"
    live["spec"].update(
        {
            "clusterIPs": ["None"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        }
    )
    live["status"] = {"loadBalancer": {}}
    return live


def test_a_served_service_matches_and_drift_does_not() -> None:
    desired = desired_service(memcached())
    live = served_service(desired)
    assert matches(live, desired)
    live["spec"]["selector"]["app.kubernetes.io/instance"] = "elsewhere"
    assert not matches(live, desired)
    live = served_service(desired)
    live["spec"]["ports"][0]["targetPort"] = 80
    assert not matches(live, desired)


def test_no_uid_no_objects() -> None:
    with pytest.raises(ValueError):
        desired_service(memcached(uid=None))
    with pytest.raises(ValueError):
        desired_pdb(memcached(uid=None, spec={"size": 2}))
