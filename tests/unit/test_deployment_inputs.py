"""The watcher asks the status service for a refresh only when a Deployment's
``deployment_inputs`` changed. Narrower inputs mean fewer refreshes that write nothing (a new
Deployment's first status update, Progressing=True before the controller has observed it, was
one for every CR); too narrow would lose a status change. So: over every combination of the
fields the fold reads, two Deployments with equal inputs fold to the same status."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import pytest

from memcached_operator.status.deployment_view import deployment_inputs
from tests.unit.test_conditions import UID, fold, memcached, outcome

pytestmark = pytest.mark.unit

COUNTS = [(0, 0, 0, 0), (1, 1, 0, 0), (1, 1, 1, 1), (2, 1, 1, 0), (2, 2, 2, 2)]
OBSERVED = [(1, None), (1, 1), (2, 1)]
AVAILABLE = [
    None,
    ("True", "MinimumReplicasAvailable", "Deployment has minimum availability."),
    ("True", "OtherReason", "another message"),
    ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability."),
    ("False", "MinimumReplicasUnavailable", "a different message"),
]
PROGRESSING = [
    None,
    ("True", "NewReplicaSetCreated", 'Created new replica set "cache-7d9f"'),
    ("True", "ReplicaSetUpdated", 'ReplicaSet "cache-7d9f" is progressing.'),
    ("True", "NewReplicaSetAvailable", 'ReplicaSet "cache-7d9f" has successfully progressed.'),
    ("False", "ProgressDeadlineExceeded", 'ReplicaSet "cache-7d9f" has timed out progressing.'),
    ("False", "ProgressDeadlineExceeded", "another deadline message"),
]
FAILURE = [None, ("True", "FailedCreate", "pods are forbidden: exceeded quota")]


def deployment(
    counts: tuple[int, int, int, int],
    observed: tuple[int, int | None],
    available: tuple[str, str, str] | None,
    progressing: tuple[str, str, str] | None,
    failure: tuple[str, str, str] | None,
) -> dict[str, Any]:
    replicas, updated, ready, available_count = counts
    generation, observed_generation = observed
    status: dict[str, Any] = {}
    if observed_generation is not None:
        status = {
            "observedGeneration": observed_generation,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available_count,
        }
    conditions = [
        {"type": type_, "status": c[0], "reason": c[1], "message": c[2]}
        for type_, c in (
            ("Available", available),
            ("Progressing", progressing),
            ("ReplicaFailure", failure),
        )
        if c is not None
    ]
    if conditions:
        status["conditions"] = conditions
    return {
        "metadata": {
            "name": "cache",
            "namespace": "team-a",
            "generation": generation,
            "ownerReferences": [{"uid": UID, "controller": True, "kind": "Memcached"}],
        },
        "spec": {"replicas": 2},
        "status": status,
    }


def all_deployments() -> list[dict[str, Any]]:
    return [
        deployment(*combo)
        for combo in itertools.product(COUNTS, OBSERVED, AVAILABLE, PROGRESSING, FAILURE)
    ]


@pytest.mark.parametrize("size", [1, 2])
def test_deployments_with_equal_inputs_fold_to_the_same_status(size: int) -> None:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for dep in all_deployments():
        groups[deployment_inputs(dep)].append(dep)
    # The inputs leave out some of what varies here (else this would prove nothing).
    assert len(groups) < len(all_deployments()) / 2, len(groups)
    for members in groups.values():
        folds = [fold(memcached(size=size), dep, [], outcome()) for dep in members]
        assert all(f == folds[0] for f in folds[1:]), (members[0], members[1:])


def test_a_new_deployments_first_status_update_wakes_nothing() -> None:
    """The Deployment controller's first write of a new Deployment: Progressing=True
    (NewReplicaSetCreated), nothing observed or counted yet; the status folds the same."""
    created = deployment((0, 0, 0, 0), (1, None), None, None, None)
    progressing = deployment((0, 0, 0, 0), (1, None), None, PROGRESSING[1], None)
    assert deployment_inputs(created) == deployment_inputs(progressing)


def test_what_the_fold_reads_of_the_conditions_still_wakes_it() -> None:
    base = ((2, 2, 2, 2), (1, 1))
    assert deployment_inputs(deployment(*base, AVAILABLE[3], None, None)) != deployment_inputs(
        deployment(*base, AVAILABLE[4], None, None)
    )
    assert deployment_inputs(deployment(*base, None, PROGRESSING[4], None)) != deployment_inputs(
        deployment(*base, None, PROGRESSING[5], None)
    )
    rolling = ((2, 2, 2, 1), (1, 1))
    assert deployment_inputs(deployment(*rolling, None, PROGRESSING[2], None)) != (
        deployment_inputs(deployment(*rolling, None, PROGRESSING[3], None))
    )
