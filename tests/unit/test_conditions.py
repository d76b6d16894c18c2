"""Unit tests of status folding: what `kubectl get mc` and `kubectl wait` show in each situation.

The inputs are built the way the API server serves Deployments and pods, and each fold is fed
the status of the previous one, as the status service does, so condition history
(lastTransitionTime, Degraded across pod changes) is exercised the way it happens in a cluster.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from memcached_operator.shared.api.contract import OWNER_ANNOTATION
from memcached_operator.shared.api.models import NODES_MAX, MemcachedStatus
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.status.conditions import fold_status
from memcached_operator.status.deployment_view import deployment_inputs
from memcached_operator.status.endpoints import ready_nodes
from memcached_operator.status.transitions import Transition, status_changed, transitions

UID = "0b5f0c1e-2d43-4c39-9e31-4f7ad1b0c001"
T0 = datetime(2025, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
STALLED = 'ReplicaSet "cache-7d9f" has timed out progressing.'


def memcached(
    *, size: int = 3, generation: int = 1, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    cr: dict[str, Any] = {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {
            "name": "cache",
            "namespace": "team-a",
            "uid": UID,
            "generation": generation,
            "resourceVersion": "100",
        },
        "spec": {"size": size},
    }
    if status is not None:
        cr["status"] = status
    return cr


def deployment(
    *,
    replicas: int = 3,
    ready: int = 3,
    updated: int | None = None,
    running: int | None = None,
    generation: int = 1,
    observed: int | None = None,
    available: bool | None = None,
    progressing: tuple[str, str, str] | None = None,
    owner_uid: str = UID,
) -> dict[str, Any]:
    """A Deployment as the API serves it; conditions default to what the controller sets."""
    if available is None:
        available = ready >= replicas
    if progressing is None:
        progressing = (
            (
                "True",
                "NewReplicaSetAvailable",
                'ReplicaSet "cache-7d9f" has successfully progressed.',
            )
            if ready >= replicas
            else ("True", "ReplicaSetUpdated", 'ReplicaSet "cache-7d9f" is progressing.')
        )
    status_, reason, message = progressing
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "cache",
            "namespace": "team-a",
            "generation": generation,
            "ownerReferences": [
                {
                    "apiVersion": "cache.example.com/v1",
                    "kind": "Memcached",
                    "name": "cache",
                    "uid": owner_uid,
                    "controller": True,
                }
            ],
        },
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": generation if observed is None else observed,
            "replicas": replicas if running is None else running,
            "updatedReplicas": replicas if updated is None else updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, replicas - ready),
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available else "False",
                    "reason": "MinimumReplicasAvailable"
                    if available
                    else "MinimumReplicasUnavailable",
                    "message": "Deployment has minimum availability."
                    if available
                    else "Deployment does not have minimum availability.",
                },
                {"type": "Progressing", "status": status_, "reason": reason, "message": message},
            ],
        },
    }


def pod(
    name: str, *, ready: bool = True, deleting: bool = False, owner: str = "cache"
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "team-a",
        "annotations": {OWNER_ANNOTATION: owner},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2025-03-01T11:59:00Z"
    return {
        "metadata": metadata,
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
        },
    }


def pods(count: int, *, ready: int | None = None) -> list[dict[str, Any]]:
    ready = count if ready is None else ready
    return [pod(f"cache-7d9f-{i}", ready=i < ready) for i in range(count)]


def outcome(
    result: str = "success",
    *,
    reason: str = "",
    message: str = "",
    uid: str = UID,
    generation: int = 1,
    trace_id: str = "4bf92f3577b34da6a3ce929d0e0e4736",
) -> Outcome:
    return Outcome.from_json(
        json.dumps(
            {
                "key": "team-a/cache",
                "uid": uid,
                "generation": generation,
                "result": result,
                "reason": reason,
                "message": message,
                "durationSeconds": 0.042,
                "traceId": trace_id,
                "time": "2025-03-01T12:00:00.123456Z",
            }
        ).encode()
    )


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def fold(
    cr: dict[str, Any],
    dep: dict[str, Any] | None,
    pod_list: list[dict[str, Any]] | None = None,
    result: Outcome | None = None,
    now: datetime = T0,
) -> dict[str, Any]:
    nodes = ready_nodes(cr, pod_list or [])
    return fold_status(cr=cr, deployment=dep, nodes=nodes, outcome=result, now=now)


@pytest.mark.unit
def test_all_ready_is_available_and_rollout_complete() -> None:
    status = fold(memcached(size=3), deployment(replicas=3, ready=3), pods(3), outcome())
    assert status["readyReplicas"] == 3
    assert status["observedGeneration"] == 1
    assert status["nodes"] == ["cache-7d9f-0", "cache-7d9f-1", "cache-7d9f-2"]
    assert status["lastTraceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    by_type = conditions(status)
    assert [c["type"] for c in status["conditions"]] == ["Available", "Progressing", "Degraded"]
    assert by_type["Available"]["status"] == "True"
    assert by_type["Available"]["reason"] == "AllReplicasReady"
    assert by_type["Available"]["message"] == "3/3 replicas ready"
    assert by_type["Progressing"]["status"] == "False"
    assert by_type["Progressing"]["reason"] == "RolloutComplete"
    assert by_type["Degraded"]["status"] == "False"
    assert by_type["Degraded"]["reason"] == "ReconcileSucceeded"
    # metav1.Time: RFC3339, UTC, whole seconds.
    assert {c["lastTransitionTime"] for c in status["conditions"]} == {"2025-03-01T12:00:00Z"}


@pytest.mark.unit
def test_every_condition_carries_observed_generation() -> None:
    cr = memcached(size=3, generation=7)
    status = fold(cr, deployment(replicas=3, ready=3, generation=4), pods(3), outcome(generation=7))
    assert status["observedGeneration"] == 7
    assert [c["observedGeneration"] for c in status["conditions"]] == [7, 7, 7]


@pytest.mark.unit
def test_scaling_up_is_progressing_and_not_available() -> None:
    first = fold(memcached(size=3), deployment(replicas=3, ready=3), pods(3), outcome())
    cr = memcached(size=5, generation=2, status=first)

    # The reconciler has not applied the new size yet: the scale is still under way.
    pending = fold(cr, deployment(replicas=3, ready=3), pods(3), outcome(generation=2))
    assert conditions(pending)["Progressing"]["status"] == "True"
    assert conditions(pending)["Available"]["status"] == "False"

    # The Deployment has 5 replicas, two of them not ready yet.
    scaling = fold(
        cr,
        deployment(replicas=5, ready=3, generation=2),
        pods(5, ready=3),
        outcome(generation=2),
        now=T0 + timedelta(seconds=5),
    )
    by_type = conditions(scaling)
    assert by_type["Progressing"]["status"] == "True"
    assert by_type["Progressing"]["reason"] == "RolloutInProgress"
    assert by_type["Available"]["status"] == "False"
    assert by_type["Available"]["reason"] == "ReplicasNotReady"
    assert by_type["Available"]["message"] == "3/5 replicas ready"
    assert scaling["readyReplicas"] == 3
    assert len(scaling["nodes"]) == 3

    done = fold(
        memcached(size=5, generation=2, status=scaling),
        deployment(replicas=5, ready=5, generation=2),
        pods(5),
        None,
        now=T0 + timedelta(seconds=30),
    )
    assert conditions(done)["Available"]["status"] == "True"
    assert conditions(done)["Progressing"]["reason"] == "RolloutComplete"
    assert done["readyReplicas"] == 5


@pytest.mark.unit
def test_progress_deadline_exceeded_is_mirrored() -> None:
    status = fold(
        memcached(size=3),
        deployment(
            replicas=3,
            ready=0,
            progressing=("False", "ProgressDeadlineExceeded", STALLED),
        ),
        pods(3, ready=0),
        outcome(),
    )
    by_type = conditions(status)
    assert by_type["Available"]["status"] == "False"
    assert by_type["Available"]["reason"] == "ProgressDeadlineExceeded"
    assert by_type["Available"]["message"].startswith("0/3 replicas ready")
    assert by_type["Progressing"]["status"] == "False"
    assert by_type["Progressing"]["reason"] == "ProgressDeadlineExceeded"
    assert by_type["Progressing"]["message"] == STALLED
    assert status["nodes"] == []


@pytest.mark.unit
def test_error_outcome_sets_degraded_and_success_clears_it() -> None:
    healthy = fold(memcached(), deployment(), pods(3), outcome())
    failed = fold(
        memcached(status=healthy),
        deployment(),
        pods(3),
        outcome(
            "error",
            reason="OwnershipConflict",
            message="Deployment team-a/cache is controlled by another owner",
        ),
        now=T0 + timedelta(minutes=1),
    )
    degraded = conditions(failed)["Degraded"]
    assert degraded["status"] == "True"
    assert degraded["reason"] == "OwnershipConflict"
    assert degraded["message"] == "Deployment team-a/cache is controlled by another owner"
    assert degraded["lastTransitionTime"] == "2025-03-01T12:01:00Z"

    # A pod change folds without an outcome: no news about reconciles keeps Degraded as is.
    unchanged = fold(
        memcached(status=failed), deployment(), pods(3), None, now=T0 + timedelta(minutes=2)
    )
    assert conditions(unchanged)["Degraded"] == degraded

    fixed = fold(
        memcached(status=unchanged),
        deployment(),
        pods(3),
        outcome(),
        now=T0 + timedelta(minutes=3),
    )
    cleared = conditions(fixed)["Degraded"]
    assert cleared["status"] == "False"
    assert cleared["reason"] == "ReconcileSucceeded"
    assert cleared["lastTransitionTime"] == "2025-03-01T12:03:00Z"


@pytest.mark.unit
def test_dead_lettered_outcome_is_degraded() -> None:
    status = fold(
        memcached(), deployment(), pods(3), outcome("deadlettered", reason="DeadLettered")
    )
    assert conditions(status)["Degraded"]["status"] == "True"
    assert conditions(status)["Degraded"]["reason"] == "DeadLettered"
    assert conditions(status)["Degraded"]["message"]


@pytest.mark.unit
def test_invalid_spec_without_deployment_is_not_progressing() -> None:
    status = fold(
        memcached(),
        None,
        [],
        outcome("error", reason="InvalidSpec", message="spec.size: must be at most 1000"),
    )
    by_type = conditions(status)
    assert by_type["Degraded"]["reason"] == "InvalidSpec"
    assert by_type["Available"]["reason"] == "DeploymentMissing"
    assert by_type["Progressing"]["status"] == "False"
    assert status["readyReplicas"] == 0


@pytest.mark.unit
def test_no_outcome_yet_is_not_degraded() -> None:
    status = fold(memcached(), None, [], None)
    degraded = conditions(status)["Degraded"]
    assert degraded["status"] == "False"
    assert degraded["reason"] == "NoFailures"
    assert conditions(status)["Progressing"]["status"] == "True"
    assert "lastTraceId" not in status


@pytest.mark.unit
def test_outcome_for_an_earlier_object_is_ignored() -> None:
    earlier = outcome(
        "error",
        reason="OwnershipConflict",
        message="stale",
        uid="11111111-2222-3333-4444-555555555555",
        trace_id="00000000000000000000000000000001",
    )
    status = fold(memcached(), deployment(), pods(3), earlier)
    assert conditions(status)["Degraded"]["status"] == "False"
    assert "lastTraceId" not in status


@pytest.mark.unit
def test_deployment_of_another_owner_is_not_reported() -> None:
    foreign = deployment(owner_uid="99999999-2222-3333-4444-555555555555")
    status = fold(memcached(), foreign, [], None)
    assert status["readyReplicas"] == 0
    assert conditions(status)["Available"]["reason"] == "DeploymentNotOwned"


@pytest.mark.unit
def test_size_zero_is_available_once_observed() -> None:
    lagging = fold(memcached(size=0), deployment(replicas=0, ready=0, generation=2, observed=1))
    assert conditions(lagging)["Available"]["status"] == "False"
    status = fold(memcached(size=0), deployment(replicas=0, ready=0, generation=2))
    assert conditions(status)["Available"]["status"] == "True"
    assert conditions(status)["Progressing"]["reason"] == "RolloutComplete"


@pytest.mark.unit
def test_transition_time_moves_only_on_a_status_flip() -> None:
    first = fold(memcached(size=5), deployment(replicas=5, ready=2), pods(5, ready=2))
    available = conditions(first)["Available"]
    assert available["message"] == "2/5 replicas ready"

    later = fold(
        memcached(size=5, status=first),
        deployment(replicas=5, ready=4),
        pods(5, ready=4),
        now=T0 + timedelta(seconds=20),
    )
    assert conditions(later)["Available"]["message"] == "4/5 replicas ready"
    assert conditions(later)["Available"]["lastTransitionTime"] == available["lastTransitionTime"]

    # A new reason with the same status is still no transition.
    stalled = fold(
        memcached(size=5, status=later),
        deployment(replicas=5, ready=4, progressing=("False", "ProgressDeadlineExceeded", STALLED)),
        pods(5, ready=4),
        now=T0 + timedelta(minutes=10),
    )
    assert conditions(stalled)["Available"]["reason"] == "ProgressDeadlineExceeded"
    assert conditions(stalled)["Available"]["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    assert conditions(stalled)["Progressing"]["lastTransitionTime"] == "2025-03-01T12:10:00Z"

    ready = fold(
        memcached(size=5, status=stalled),
        deployment(replicas=5, ready=5),
        pods(5),
        now=T0 + timedelta(minutes=11, microseconds=600_000),
    )
    assert conditions(ready)["Available"]["status"] == "True"
    assert conditions(ready)["Available"]["lastTransitionTime"] == "2025-03-01T12:11:00Z"


@pytest.mark.unit
def test_identical_recomputation_needs_no_write() -> None:
    first = fold(memcached(), deployment(), pods(3), outcome())
    cr = memcached(status=first)
    for minutes in (1, 5, 60):
        again = fold(cr, deployment(), pods(3), None, now=T0 + timedelta(minutes=minutes))
        assert not status_changed(first, again)
        assert transitions(first, again) == []


@pytest.mark.unit
def test_status_changed_ignores_order_and_timestamp_spelling() -> None:
    new = fold(memcached(), deployment(), pods(3), outcome())
    as_stored = json.loads(json.dumps(new))
    as_stored["conditions"].reverse()
    for condition in as_stored["conditions"]:
        condition["lastTransitionTime"] = "2025-03-01T12:00:00+00:00"
    reordered = dict(reversed(list(as_stored.items())))
    assert not status_changed(reordered, new)
    assert status_changed(None, new)
    assert status_changed({**reordered, "readyReplicas": 2}, new)
    assert status_changed({**reordered, "nodes": ["cache-7d9f-0"]}, new)


@pytest.mark.unit
def test_nodes_are_sorted_ready_pods_of_this_cr_only() -> None:
    pod_list = [
        pod("cache-b"),
        pod("cache-a"),
        pod("cache-c", ready=False),
        pod("cache-d", deleting=True),
        pod("other-a", owner="other"),
        {"metadata": {"name": "cache-e", "annotations": {OWNER_ANNOTATION: "cache"}}},
    ]
    status = fold(memcached(), deployment(), pod_list)
    assert status["nodes"] == ["cache-a", "cache-b"]


@pytest.mark.unit
def test_nodes_and_trace_id_stay_within_the_schema_bounds() -> None:
    # Anyone who can create pods in the namespace can annotate them as ours; the status write
    # must still pass the CRD's maxItems, and a trace id that is no W3C id must not break it.
    pod_list = [pod(f"cache-{i:05d}") for i in range(NODES_MAX + 5)]
    status = fold(memcached(), deployment(), pod_list, outcome(trace_id="not-a-trace-id"))
    assert len(status["nodes"]) == NODES_MAX
    assert status["nodes"][0] == "cache-00000"
    assert "lastTraceId" not in status
    MemcachedStatus.model_validate(status)


@pytest.mark.unit
def test_other_writers_conditions_are_kept() -> None:
    theirs = {
        "type": "example.com/Backup",
        "status": "True",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
        "reason": "Done",
        "message": "backed up",
    }
    status = fold(memcached(status={"conditions": [theirs]}), deployment(), pods(3))
    assert conditions(status)["example.com/Backup"] == theirs


@pytest.mark.unit
def test_transitions_report_flips_and_abnormal_reasons() -> None:
    first = fold(memcached(size=5), deployment(replicas=5, ready=2), pods(5, ready=2))
    created = transitions(None, first)
    assert [(t.type, t.old_status, t.new_status) for t in created] == [
        ("Available", None, "False"),
        ("Progressing", None, "True"),
        ("Degraded", None, "False"),
    ]

    stalled = fold(
        memcached(size=5, status=first),
        deployment(replicas=5, ready=2, progressing=("False", "ProgressDeadlineExceeded", STALLED)),
        pods(5, ready=2),
        now=T0 + timedelta(minutes=10),
    )
    changes = transitions(first, stalled)
    assert changes == [
        Transition(
            type="Available",
            old_status="False",
            new_status="False",
            reason="ProgressDeadlineExceeded",
            message=f"2/5 replicas ready: {STALLED}",
            old_reason="ReplicasNotReady",
        ),
        Transition(
            type="Progressing",
            old_status="True",
            new_status="False",
            reason="ProgressDeadlineExceeded",
            message=STALLED,
            old_reason="RolloutInProgress",
        ),
        Transition(
            type="Degraded",
            old_status="False",
            new_status="True",
            reason="ProgressDeadlineExceeded",
            message=STALLED,
            old_reason="NoFailures",
        ),
    ]
    assert all(t.warning for t in changes)
    # One Event says so: Degraded (Available was not ready before either, and Progressing
    # would say the same thing a second time).
    assert [t.type for t in changes if t.newsworthy] == ["Degraded"]

    # NoFailures -> ReconcileSucceeded is a new reason for a healthy state: not news.
    succeeded = fold(
        memcached(size=5, status=stalled), deployment(replicas=5, ready=5), pods(5), outcome()
    )
    kinds = {(t.type, t.new_status, t.warning) for t in transitions(stalled, succeeded)}
    assert kinds == {
        ("Available", "True", False),
        ("Progressing", "False", False),
        ("Degraded", "False", False),
    }


@pytest.mark.unit
def test_outcome_parsing() -> None:
    parsed = outcome("error", reason="InvalidSpec", message="bad")
    assert parsed.object_key.namespace == "team-a"
    assert parsed.duration_seconds == pytest.approx(0.042)
    assert parsed.time == datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert Outcome.from_json(parsed.to_json()) == parsed


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"not json", "not a reconcile outcome"),
        (b"[]", "not a reconcile outcome"),
        (b'{"key": "team-a/cache"}', "uid"),
        (
            b'{"key": "cache", "uid": "u", "generation": 1, "result": "success",'
            b' "time": "2025-03-01T12:00:00Z"}',
            "namespace/name",
        ),
        (
            b'{"key": "a/b", "uid": "u", "generation": 1, "result": "maybe",'
            b' "time": "2025-03-01T12:00:00Z"}',
            "result",
        ),
    ],
)
def test_outcome_garbage_is_a_value_error(body: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Outcome.from_json(body)


@pytest.mark.unit
def test_only_newsworthy_transitions_become_events() -> None:
    from memcached_operator.status.transitions import Transition

    def t(
        type_: str, old: str | None, new: str, reason: str = "R", old_reason: str | None = None
    ) -> Transition:
        if old is not None and old_reason is None:
            old_reason = "Before"
        return Transition(type_, old, new, reason, "m", old_reason)

    # A new CR's initial not-yet states are no news; reaching Available or failing is.
    assert not t("Available", None, "False", "ReplicasNotReady").newsworthy
    assert not t("Progressing", None, "True", "RolloutInProgress").newsworthy
    assert not t("Degraded", None, "False", "NoFailures").newsworthy
    assert t("Available", None, "True", "AllReplicasReady").newsworthy
    assert t("Degraded", None, "True", "InvalidSpec").newsworthy
    # Available and Degraded flipping either way are.
    assert t("Available", "False", "True", "AllReplicasReady").newsworthy
    assert t("Available", "True", "False", "ReplicasNotReady").newsworthy
    assert t("Degraded", "False", "True", "ReconcileFailed").newsworthy
    assert t("Degraded", "True", "False", "ReconcileSucceeded").newsworthy
    # A failure that changed its reason is; a not-yet state moving to the next is not.
    assert t("Degraded", "True", "True", "OwnershipConflict", "ReconcileFailed").newsworthy
    assert not t("Available", "False", "False", "ReplicasNotReady", "DeploymentMissing").newsworthy
    # A rollout starting or completing is routine; stalling, or recovering from it, is news
    # that Degraded carries (one Event, not the same fact twice).
    assert not t("Progressing", "False", "True", "RolloutInProgress", "RolloutComplete").newsworthy
    assert not t("Progressing", "True", "False", "RolloutComplete", "RolloutInProgress").newsworthy
    assert not t("Progressing", None, "False", "ProgressDeadlineExceeded").newsworthy
    assert not t("Progressing", "True", "False", "FailedCreate", "RolloutInProgress").newsworthy
    assert t("Degraded", "False", "True", "ProgressDeadlineExceeded", "NoFailures").newsworthy
    assert t("Degraded", "False", "True", "FailedCreate", "ReconcileSucceeded").newsworthy
    assert t("Degraded", "True", "False", "ReconcileSucceeded", "FailedCreate").newsworthy
    assert t("Degraded", "True", "True", "ProgressDeadlineExceeded", "FailedCreate").newsworthy


@pytest.mark.unit
def test_a_new_healthy_cr_makes_one_event_on_its_way_to_available() -> None:
    """The status versions a new CR goes through when all goes well: only reaching Available is
    an Event (each one is an API write; `kubectl describe` still shows when it became ready)."""
    steps = [
        (None, []),
        (deployment(replicas=1, ready=0), []),
        (deployment(replicas=1, ready=1), pods(1)),
    ]
    status: dict[str, Any] | None = None
    news: list[tuple[str, str]] = []
    for dep, pod_list in steps:
        new = fold(memcached(size=1, status=status), dep, pod_list, outcome())
        news += [(c.type, c.new_status) for c in transitions(status, new) if c.newsworthy]
        status = new
    assert conditions(status)["Available"]["status"] == "True"
    assert news == [("Available", "True")]


REFUSED = (
    'pods "cache-7d9f-x2x4q" is forbidden: maximum memory usage per Container is 64Mi, '
    "but limit is 128Mi"
)


def failing(dep: dict[str, Any], *, reason: str = "FailedCreate", message: str = REFUSED) -> dict:
    """``dep`` with the ReplicaFailure the Deployment controller copies from its ReplicaSet."""
    dep["status"]["conditions"].append(
        {"type": "ReplicaFailure", "status": "True", "reason": reason, "message": message}
    )
    return dep


@pytest.mark.unit
def test_pods_the_api_refuses_make_the_cr_degraded_at_once() -> None:
    """A quota or LimitRange refuses every pod: the Deployment still says Progressing=True
    (until its deadline), but the CR says Degraded with the API's reason and message now."""
    rolling = fold(memcached(size=1), deployment(replicas=1, ready=0), [], outcome())
    assert conditions(rolling)["Progressing"]["reason"] == "RolloutInProgress"

    refused = fold(
        memcached(size=1, status=rolling),
        failing(deployment(replicas=1, ready=0, running=0, updated=0)),
        [],
        outcome(),
        now=T0 + timedelta(seconds=3),
    )
    by_type = conditions(refused)
    assert by_type["Degraded"]["status"] == "True"
    assert by_type["Degraded"]["reason"] == "FailedCreate"
    assert by_type["Degraded"]["message"] == REFUSED
    assert by_type["Degraded"]["observedGeneration"] == 1
    assert by_type["Degraded"]["lastTransitionTime"] == "2025-03-01T12:00:03Z"
    # Nothing is progressing, and the reason says why; Available says it too.
    assert by_type["Progressing"]["status"] == "False"
    assert by_type["Progressing"]["reason"] == "FailedCreate"
    assert by_type["Available"]["status"] == "False"
    assert by_type["Available"]["reason"] == "FailedCreate"
    assert by_type["Available"]["message"] == f"0/1 replicas ready: {REFUSED}"
    # One Warning Event: Degraded.
    news = [t for t in transitions(rolling, refused) if t.newsworthy]
    assert [(t.type, t.reason, t.warning) for t in news] == [("Degraded", "FailedCreate", True)]
    assert news[0].message == REFUSED

    # The quota is raised: the ReplicaSet creates the pod, the controller drops the condition.
    for result in (outcome(), None):
        fixed = fold(
            memcached(size=1, status=refused),
            deployment(replicas=1, ready=1),
            pods(1),
            result,
            now=T0 + timedelta(seconds=30),
        )
        by_type = conditions(fixed)
        assert by_type["Degraded"]["status"] == "False"
        assert by_type["Available"]["status"] == "True"
        assert by_type["Progressing"]["reason"] == "RolloutComplete"
        news = [(t.type, t.new_status) for t in transitions(refused, fixed) if t.newsworthy]
        assert news == [("Available", "True"), ("Degraded", "False")]


@pytest.mark.unit
def test_a_refused_pod_stays_degraded_without_new_outcomes() -> None:
    """A pod or Deployment change folds without a new outcome: the Deployment's failure is
    read again from the Deployment, not forgotten."""
    refused = fold(
        memcached(size=1), failing(deployment(replicas=1, ready=0, running=0)), [], outcome()
    )
    again = fold(
        memcached(size=1, status=refused),
        failing(deployment(replicas=1, ready=0, running=0)),
        [],
        None,
        now=T0 + timedelta(minutes=1),
    )
    assert not status_changed(refused, again)
    assert conditions(again)["Degraded"]["reason"] == "FailedCreate"


@pytest.mark.unit
def test_a_failed_reconcile_is_said_before_the_deployments_failure() -> None:
    status = fold(
        memcached(size=1),
        failing(deployment(replicas=1, ready=0, running=0)),
        [],
        outcome("error", reason="Forbidden", message="deployments.apps is forbidden"),
    )
    assert conditions(status)["Degraded"]["reason"] == "Forbidden"
    # No outcome since: that failure is kept, not replaced by the Deployment's.
    later = fold(
        memcached(size=1, status=status),
        failing(deployment(replicas=1, ready=0, running=0)),
        [],
        None,
    )
    assert conditions(later)["Degraded"]["reason"] == "Forbidden"


@pytest.mark.unit
def test_progress_deadline_exceeded_is_degraded_too() -> None:
    stalled = deployment(
        replicas=3, ready=0, progressing=("False", "ProgressDeadlineExceeded", STALLED)
    )
    degraded = conditions(fold(memcached(size=3), stalled, pods(3, ready=0), outcome()))["Degraded"]
    assert (degraded["status"], degraded["reason"], degraded["message"]) == (
        "True",
        "ProgressDeadlineExceeded",
        STALLED,
    )
    # Both at once: Degraded names the cause (what refused the pods), Progressing the deadline.
    both = fold(memcached(size=3), failing(stalled), [], outcome())
    assert conditions(both)["Degraded"]["reason"] == "FailedCreate"
    assert conditions(both)["Progressing"]["reason"] == "ProgressDeadlineExceeded"


@pytest.mark.unit
def test_a_replica_failure_with_unusable_text_still_fits_a_condition() -> None:
    """The reason and message come from the API; ones a Condition cannot hold must not make
    the whole status write fail."""
    status = fold(
        memcached(size=1),
        failing(deployment(replicas=1, ready=0), reason="not a reason!", message="x" * 40_000),
        [],
        outcome(),
    )
    degraded = conditions(status)["Degraded"]
    assert degraded["reason"] == "ReplicaFailure"
    assert len(degraded["message"]) == 32768 and degraded["message"].endswith("...")
    assert conditions(status)["Progressing"]["reason"] == "ReplicaFailure"


@pytest.mark.unit
def test_replica_failure_wakes_the_status_service() -> None:
    """The watcher asks for a status refresh only when deployment_inputs differ, so the
    condition that says why pods are missing must be among them."""
    rolling = deployment(replicas=1, ready=0, running=0)
    assert deployment_inputs(rolling) != deployment_inputs(
        failing(deployment(replicas=1, ready=0, running=0))
    )
    assert deployment_inputs(failing(deployment(replicas=1, ready=0))) != deployment_inputs(
        failing(deployment(replicas=1, ready=0), message="exceeded quota: mem")
    )


@pytest.mark.unit
def test_dead_lettered_is_one_reason_with_the_queue_reason_in_the_message() -> None:
    status = fold(
        memcached(),
        deployment(),
        pods(3),
        outcome(
            "deadlettered",
            reason="MaxDeliveriesExceeded",
            message="delivered 11 times without completing",
        ),
    )
    degraded = conditions(status)["Degraded"]
    assert degraded["reason"] == "DeadLettered"
    assert degraded["message"] == "MaxDeliveriesExceeded: delivered 11 times without completing"
    assert degraded["observedGeneration"] == 1
