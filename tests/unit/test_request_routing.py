"""Which changes the watcher turns into reconcile and status requests (no I/O involved)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from memcached_operator import routes as composition
from memcached_operator.shared.api.contract import (
    FIELD_MANAGER,
    OWNER_ANNOTATION,
    RECONCILE,
    STATUS,
)
from memcached_operator.shared.bus.routing import Change, For, Owns, Router, Target
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.watcher.owners import Kind, find_owner

pytestmark = pytest.mark.unit

MEMCACHED = Kind("memcached", owned=False)
DEPLOYMENT = Kind("deployment", owned=True)
POD = Kind("pod", owned=True)
OWNER = ObjectKey("ns", "cache")


def deployment(*, generation: int, writers: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "cache",
            "namespace": "ns",
            "generation": generation,
            "ownerReferences": [
                {
                    "apiVersion": "cache.example.com/v1",
                    "kind": "Memcached",
                    "name": "cache",
                    "controller": True,
                }
            ],
            "managedFields": [
                {"manager": manager, "operation": "Apply", "time": time}
                for manager, time in writers
            ],
        }
    }


def pod(name: str, *, ready: bool) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"pod-template-hash": "5d8f9c7b6"},
            "annotations": {OWNER_ANNOTATION: "cache"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "cache-5d8f9c7b6",
                    "controller": True,
                }
            ],
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def routes(router: Router, kind: Kind, change: str, obj: dict[str, Any]) -> list[str]:
    meta = obj["metadata"]
    key = ObjectKey(meta["namespace"], meta["name"])
    owner = find_owner(kind.name, obj).key if kind.owned else None
    return [
        controller for controller, _ in router.requests(Change(kind.name, change, key, owner, obj))
    ]


@pytest.fixture
def router() -> Router:
    """The watcher's routing table as the package root builds it from every controller's
    declarations (services/reconciler/watches.py, services/status/watches.py)."""
    return composition.router()


def test_our_own_deployment_creation_and_rollout_wake_only_the_status_service(
    router: Router,
) -> None:
    ours = [(FIELD_MANAGER, "2026-01-01T00:00:00Z")]
    assert routes(router, DEPLOYMENT, "added", deployment(generation=1, writers=ours)) == [STATUS]
    assert routes(router, DEPLOYMENT, "modified", deployment(generation=2, writers=ours)) == [
        STATUS
    ]


def test_anyone_elses_deployment_edit_creation_or_a_deletion_asks_for_a_reconcile(
    router: Router,
) -> None:
    ours = (FIELD_MANAGER, "2026-01-01T00:00:00Z")
    kubectl = ("kubectl-edit", "2026-01-01T00:00:05Z")
    edited = deployment(generation=2, writers=[ours, kubectl])
    routes(router, DEPLOYMENT, "modified", deployment(generation=1, writers=[ours]))
    assert routes(router, DEPLOYMENT, "modified", edited) == [RECONCILE, STATUS]
    theirs = deployment(generation=1, writers=[("someone", "2026-01-01T00:00:00Z")])
    assert routes(router, DEPLOYMENT, "added", theirs) == [RECONCILE, STATUS]
    gone = deployment(generation=2, writers=[ours])
    assert routes(router, DEPLOYMENT, "deleted", gone) == [RECONCILE, STATUS]


def test_a_deployment_status_update_does_not_reconcile(router: Router) -> None:
    ours = [(FIELD_MANAGER, "2026-01-01T00:00:00Z")]
    routes(router, DEPLOYMENT, "added", deployment(generation=1, writers=ours))
    same_generation = deployment(generation=1, writers=ours)
    same_generation["status"] = {"observedGeneration": 1, "readyReplicas": 1}
    assert routes(router, DEPLOYMENT, "modified", same_generation) == [STATUS]


def test_memcached_status_writes_do_not_reconcile_but_spec_changes_do(
    router: Router,
) -> None:
    cr = {"metadata": {"name": "cache", "namespace": "ns", "generation": 1}}
    assert routes(router, MEMCACHED, "added", cr) == [RECONCILE]
    assert routes(router, MEMCACHED, "modified", cr) == []
    cr["metadata"]["generation"] = 2
    assert routes(router, MEMCACHED, "modified", cr) == [RECONCILE]


def test_pods_wake_the_status_service_only_when_readiness_changes(router: Router) -> None:
    assert routes(router, POD, "added", pod("p1", ready=False)) == []
    assert routes(router, POD, "modified", pod("p1", ready=False)) == []
    assert routes(router, POD, "modified", pod("p1", ready=True)) == [STATUS]
    assert routes(router, POD, "modified", pod("p1", ready=True)) == []
    assert routes(router, POD, "deleted", pod("p1", ready=True)) == [STATUS]


def test_deployment_changes_the_status_is_not_folded_from_wake_nobody(
    router: Router,
) -> None:
    ours = [(FIELD_MANAGER, "2026-01-01T00:00:00Z")]
    dep = deployment(generation=1, writers=ours)
    assert routes(router, DEPLOYMENT, "added", dep) == [STATUS]
    # The Deployment controller's revision annotation: same generation, same status.
    dep["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    assert routes(router, DEPLOYMENT, "modified", dep) == []
    # A condition's lastUpdateTime alone is no news either; its counts and reasons are.
    dep["status"] = {
        "observedGeneration": 1,
        "replicas": 1,
        "conditions": [
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetCreated",
                "lastUpdateTime": "2026-01-01T00:00:01Z",
            }
        ],
    }
    assert routes(router, DEPLOYMENT, "modified", dep) == [STATUS]
    dep["status"]["conditions"][0]["lastUpdateTime"] = "2026-01-01T00:00:02Z"
    assert routes(router, DEPLOYMENT, "modified", dep) == []
    dep["status"]["readyReplicas"] = 1
    assert routes(router, DEPLOYMENT, "modified", dep) == [STATUS]
    assert routes(router, DEPLOYMENT, "deleted", dep) == [RECONCILE, STATUS]


def with_ready(dep: dict[str, Any], ready: int) -> dict[str, Any]:
    return {**dep, "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": ready}}


def test_a_pod_that_its_deployment_has_not_counted_yet_waits_for_the_deployments_update(
    router: Router,
) -> None:
    dep = deployment(generation=1, writers=[(FIELD_MANAGER, "2026-01-01T00:00:00Z")])
    routes(router, DEPLOYMENT, "added", with_ready(dep, 0))
    # p1 becomes ready before the Deployment controller counts it: its update brings both.
    assert routes(router, POD, "modified", pod("p1", ready=True)) == []
    assert routes(router, DEPLOYMENT, "modified", with_ready(dep, 1)) == [STATUS]
    # The other order: the Deployment counts p2 first (its refresh cannot see p2 yet), then
    # p2's own change is the one that brings p2 into the status.
    assert routes(router, DEPLOYMENT, "modified", with_ready(dep, 2)) == [STATUS]
    assert routes(router, POD, "modified", pod("p2", ready=True)) == [STATUS]
    # A ready pod replaced by another while the count stays the same: the replacement's
    # readiness is what moves the nodes, so it asks.
    assert routes(router, POD, "deleted", pod("p1", ready=True)) == []
    assert routes(router, POD, "modified", pod("p3", ready=True)) == [STATUS]


def test_pods_of_a_cr_whose_deployment_was_not_seen_always_ask(router: Router) -> None:
    assert routes(router, POD, "modified", pod("p1", ready=True)) == [STATUS]
    dep = deployment(generation=1, writers=[(FIELD_MANAGER, "2026-01-01T00:00:00Z")])
    routes(router, DEPLOYMENT, "added", with_ready(dep, 1))
    routes(router, DEPLOYMENT, "deleted", with_ready(dep, 1))
    assert routes(router, POD, "deleted", pod("p1", ready=True)) == [STATUS]


PDB = Kind("pdb", owned=True)


def test_a_disruption_budget_is_reconciled_on_drift_and_deletion_only(
    router: Router,
) -> None:
    ours = deployment(generation=1, writers=[(FIELD_MANAGER, "2025-03-01T10:00:00Z")])
    assert routes(router, PDB, "added", ours) == []
    drifted = deployment(
        generation=2,
        writers=[(FIELD_MANAGER, "2025-03-01T10:00:00Z"), ("kubectl", "2025-03-01T10:01:00Z")],
    )
    assert routes(router, PDB, "modified", drifted) == [RECONCILE]
    # Its status (the disruption controller's counts) is no reason to reconcile, nor does it
    # show in the CR's status, unlike a Deployment's.
    assert routes(router, PDB, "modified", drifted) == []
    assert routes(router, PDB, "deleted", drifted) == [RECONCILE]


SERVICE = Kind("service", owned=True)


def test_a_service_without_a_generation_is_reconciled_when_its_spec_drifts(
    router: Router,
) -> None:
    ours = deployment(generation=0, writers=[(FIELD_MANAGER, "2025-03-01T10:00:00Z")])
    ours["spec"] = {"selector": {"app": "cache"}}
    assert routes(router, SERVICE, "added", ours) == []
    drifted = copy.deepcopy(ours)
    drifted["spec"]["selector"] = {"app": "elsewhere"}
    drifted["metadata"]["managedFields"].append(
        {"manager": "kubectl", "operation": "Update", "time": "2025-03-01T10:01:00Z"}
    )
    assert routes(router, SERVICE, "modified", drifted) == [RECONCILE]
    # The same spec again (a metadata-only edit): nothing to reconcile.
    assert routes(router, SERVICE, "modified", drifted) == []
    assert routes(router, SERVICE, "deleted", drifted) == [RECONCILE]


def test_every_declared_kind_is_watched_and_the_owner_of_an_owned_kind_is_found() -> None:
    from memcached_operator.watcher.service import WATCHED

    watched = {kind.name: kind for kind, _, _ in WATCHED}
    declared = composition.router().watches
    assert {watch.kind for watch in declared} == set(watched)
    for watch in declared:
        # Owns/Watches route to the owner the watcher finds, For to the object itself.
        assert watched[watch.kind].owned == (watch.target is Target.OWNER), watch


def test_every_predicate_of_a_declaration_sees_every_change_it_can_route() -> None:
    seen: list[tuple[str, str]] = []

    def remembers(name: str, verdict: bool) -> Callable[[Change], bool]:
        def predicate(change: Change) -> bool:
            seen.append((name, change.key.name))
            return verdict

        return predicate

    router = Router(
        (
            Owns("first", "deployment", remembers("rejects", False), remembers("after", True)),
            Owns("second", "deployment", remembers("passes", True)),
            For("third", "memcached", remembers("own", True)),
        )
    )
    change = Change("deployment", "modified", ObjectKey("ns", "dep"), OWNER, {})
    assert router.requests(change) == [("second", OWNER)]
    # The second predicate of "first" remembers the change although the first rejected it.
    assert seen == [("rejects", "dep"), ("after", "dep"), ("passes", "dep")]
    seen.clear()
    # An owned object without a believed owner wakes nobody, and no predicate remembers it.
    unowned = Change("deployment", "modified", ObjectKey("ns", "dep"), None, {})
    assert router.requests(unowned) == []
    assert seen == []
    cr = Change("memcached", "added", OWNER, None, {})
    assert router.requests(cr) == [("third", OWNER)]
