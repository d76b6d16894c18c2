"""The bench's Observer: a CR counts as converged ("all objects correct") only once its
Deployment, its Service and, from two pods, its PodDisruptionBudget are each as the reconciler
would have them, and a PodDisruptionBudget it should not have keeps it from converging.
Events are fed by hand: no API server."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bench.harness import Observer
from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment
from memcached_operator.shared.api.models import Memcached

pytestmark = pytest.mark.unit


def cr(name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {"size": size},
    }


def observer(*crs: dict[str, Any]) -> Observer:
    o = Observer(kube=None, namespace="ns", expected=len(crs))  # type: ignore[arg-type]
    for obj in crs:
        o.created(obj)
    return o


def service(o: Observer) -> Any:
    return o._on_companion("service")


def pdb(o: Observer) -> Any:
    return o._on_companion("pdb")


def test_one_pod_needs_its_deployment_and_service_and_no_budget() -> None:
    obj = cr("a", 1)
    model = Memcached.from_api(obj)
    o = observer(obj)
    service(o)("ADDED", desired_service(model))
    assert o.objects_ok == {}  # the Deployment is not there yet
    o._on_deployment("ADDED", desired_deployment(model))
    assert set(o.deployment_ok) == {"a"} and set(o.objects_ok) == {"a"}
    assert o.done(need_available=False)


def test_two_pods_wait_for_the_budget_and_a_wrong_service_does_not_count() -> None:
    obj = cr("b", 2)
    model = Memcached.from_api(obj)
    o = observer(obj)
    o._on_deployment("ADDED", desired_deployment(model))
    wrong = copy.deepcopy(desired_service(model))
    wrong["spec"]["selector"] = {"app": "other"}
    service(o)("ADDED", wrong)
    assert set(o.deployment_ok) == {"b"} and o.objects_ok == {}
    service(o)("MODIFIED", desired_service(model))
    assert o.objects_ok == {}  # no PodDisruptionBudget yet
    budget = desired_pdb(model)
    assert budget is not None
    pdb(o)("ADDED", budget)
    assert set(o.objects_ok) == {"b"}


def test_a_budget_the_cr_should_not_have_keeps_it_unconverged() -> None:
    obj = cr("c", 1)
    model = Memcached.from_api(obj)
    o = observer(obj)
    stale = desired_pdb(Memcached.from_api(cr("c", 2)))
    assert stale is not None
    pdb(o)("ADDED", stale)
    service(o)("ADDED", desired_service(model))
    o._on_deployment("ADDED", desired_deployment(model))
    assert o.objects_ok == {}
    pdb(o)("DELETED", stale)
    assert set(o.objects_ok) == {"c"}
