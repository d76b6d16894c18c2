"""Folding a Memcached's observed world into its ``status``: pure functions, no I/O.

The inputs are the CR, its Deployment (deployment_view.py) and ready pods (endpoints.py) as the
API serves them and the reconciler's last published :class:`Outcome`; the output is the status
in API shape, with the conditions Available, Progressing and Degraded under metav1.Condition
semantics. Degraded=True says why nothing converges: a failed or dead-lettered reconcile, else
the Deployment's own word (pods the API refuses, reported as ReplicaFailure within seconds, or
the progress deadline). Whether the folded status is worth a write, and which of its
transitions deserve an Event, is transitions.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from memcached_operator.shared.api.contract import (
    AVAILABLE,
    CONDITION_TYPES,
    DEGRADED,
    PROGRESSING,
    owned_by,
)
from memcached_operator.shared.api.models import (
    NODES_MAX,
    TRACE_ID_PATTERN,
    Condition,
    MemcachedStatus,
)
from memcached_operator.shared.events.outcomes import DEAD_LETTERED, Outcome
from memcached_operator.status.deployment_view import (
    PROGRESS_DEADLINE_EXCEEDED,
    REPLICA_FAILURE,
    DeploymentView,
    as_int,
    conditions_by_type,
    fit_reason,
)

# Also importable from here, where bench/floor.py and bench/peers/kopf_operator.py look for them.
from memcached_operator.status.endpoints import ready_nodes
from memcached_operator.status.transitions import status_changed

__all__ = ["Outcome", "fold_status", "ready_nodes", "status_changed"]

# Reasons this module sets. The Deployment's own reasons (ProgressDeadlineExceeded) are reused
# where the meaning is the same, so a user who knows Deployments reads them without a glossary.
ALL_REPLICAS_READY = "AllReplicasReady"
REPLICAS_NOT_READY = "ReplicasNotReady"
DEPLOYMENT_MISSING = "DeploymentMissing"
DEPLOYMENT_NOT_OWNED = "DeploymentNotOwned"
DEPLOYMENT_UNAVAILABLE = "DeploymentUnavailable"
WAITING_FOR_DEPLOYMENT = "WaitingForDeployment"
ROLLOUT_IN_PROGRESS = "RolloutInProgress"
ROLLOUT_COMPLETE = "RolloutComplete"
RECONCILE_FAILED = "ReconcileFailed"
RECONCILE_SUCCEEDED = "ReconcileSucceeded"
NO_FAILURES = "NoFailures"
# Degraded reasons that come from the Deployment rather than from a reconcile outcome: they
# are recomputed from the Deployment at every fold, never kept as an outcome's are (a rollout
# that recovered must not stay Degraded for want of a new outcome). FailedCreate and
# FailedDelete are the ReplicaSet controller's reasons.
_DEPLOYMENT_FAILURE_REASONS = frozenset(
    {"FailedCreate", "FailedDelete", REPLICA_FAILURE, PROGRESS_DEADLINE_EXCEEDED}
)

# metav1.Condition's message limit: a condition that breaks it would make the API server reject
# the whole status write, so outcome text is fitted to it first (reasons: fit_reason).
_MESSAGE_MAX = 32768


@dataclass(frozen=True)
class _Verdict:
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    observed_generation: int


def _fit_message(message: str) -> str:
    return message if len(message) <= _MESSAGE_MAX else message[: _MESSAGE_MAX - 3] + "..."


def _available(
    view: DeploymentView | None, *, size: int, generation: int, missing: _Verdict
) -> _Verdict:
    if view is None:
        return missing
    counts = f"{view.ready}/{size} replicas ready"
    if size == 0:
        # Nothing has to become ready, so the only thing to wait for is the Deployment
        # controller acting on the latest spec.
        if view.observed:
            return _Verdict("True", ALL_REPLICAS_READY, f"{counts}: scaled to zero", generation)
        return _Verdict(
            "False",
            WAITING_FOR_DEPLOYMENT,
            "waiting for the Deployment controller to observe the latest spec",
            generation,
        )
    deployment_available = view.available_condition.get("status") == "True"
    if view.ready >= size and deployment_available:
        return _Verdict("True", ALL_REPLICAS_READY, counts, generation)
    if view.deadline_exceeded:
        return _Verdict(
            "False", PROGRESS_DEADLINE_EXCEEDED, f"{counts}: {view.deadline_message}", generation
        )
    failure = view.replica_failure
    if failure is not None and view.ready < size:
        return _Verdict("False", failure[0], f"{counts}: {failure[1]}", generation)
    if view.ready >= size:
        detail = str(view.available_condition.get("message") or "").strip()
        message = f"{counts}, but the Deployment is not available"
        return _Verdict(
            "False",
            DEPLOYMENT_UNAVAILABLE,
            f"{message}: {detail}" if detail else message,
            generation,
        )
    return _Verdict("False", REPLICAS_NOT_READY, counts, generation)


def _progressing(
    view: DeploymentView | None, *, size: int, generation: int, missing: _Verdict, degraded: bool
) -> _Verdict:
    if view is None:
        if degraded:
            # Nothing will roll out until the reconciler succeeds; saying "progressing"
            # would promise a change that is not coming.
            return _Verdict(
                "False",
                RECONCILE_FAILED,
                "no rollout can start until the reconcile succeeds (see the Degraded condition)",
                generation,
            )
        return _Verdict("True", missing.reason, missing.message, generation)
    if not view.observed or view.spec_replicas != size:
        return _Verdict(
            "True",
            ROLLOUT_IN_PROGRESS,
            f"waiting for the Deployment to take on the latest spec ({size} replicas)",
            generation,
        )
    if view.deadline_exceeded:
        return _Verdict("False", PROGRESS_DEADLINE_EXCEEDED, view.deadline_message, generation)
    failure = view.replica_failure
    if failure is not None:
        # The Deployment still says Progressing=True until its deadline, but no pod can be
        # created, so nothing progresses; the reason says why (the message is on Degraded).
        return _Verdict(
            "False",
            failure[0],
            "the rollout cannot progress: pods cannot be created or deleted "
            "(see the Degraded condition)",
            generation,
        )
    rolling = view.rolling
    if (
        view.replicas != size
        or view.updated != size
        or view.ready != size
        or (rolling and view.available < size)
    ):
        return _Verdict(
            "True",
            ROLLOUT_IN_PROGRESS,
            f"{view.ready}/{size} replicas ready, {view.updated}/{size} updated, "
            f"{view.replicas} running",
            generation,
        )
    return _Verdict(
        "False", ROLLOUT_COMPLETE, f"{size}/{size} replicas updated and ready", generation
    )


def _parsed(raw: dict[str, Any] | None) -> Condition | None:
    if raw is None:
        return None
    try:
        return Condition.model_validate(raw)
    except ValidationError:
        return None


def _degraded(outcome: Outcome | None, *, generation: int) -> _Verdict:
    if outcome is None:
        return _Verdict("False", NO_FAILURES, "no reconcile failure has been reported", generation)
    if outcome.result == "deadlettered":
        # Always this one reason, whatever the queue's own was (it goes into the message): the
        # watcher's resync recognises a dead-lettered generation by it (services/watcher/
        # resync.py) and leaves the CR alone until its spec changes.
        message = outcome.message.strip() or "the reconcile request was dead-lettered"
        cause = outcome.reason.strip()
        if cause and cause != DEAD_LETTERED and not message.startswith(cause):
            message = f"{cause}: {message}"
        return _Verdict("True", DEAD_LETTERED, _fit_message(message), outcome.generation)
    if outcome.failed:
        reason = fit_reason(outcome.reason, RECONCILE_FAILED)
        message = outcome.message.strip() or "the last reconcile failed"
        return _Verdict("True", reason, _fit_message(message), outcome.generation)
    return _Verdict(
        "False",
        RECONCILE_SUCCEEDED,
        f"generation {outcome.generation} was reconciled successfully",
        outcome.generation,
    )


def _seconds(now: datetime) -> datetime:
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return now.replace(microsecond=0)


def _condition(
    type_: str, verdict: _Verdict, *, previous: dict[str, Any] | None, now: datetime
) -> Condition:
    transition_time = now
    parsed = _parsed(previous)
    if parsed is not None and parsed.status == verdict.status:
        # metav1 semantics: the time moves only when the status flips, not on a new reason
        # or message, so "how long has it been unavailable" stays answerable.
        transition_time = parsed.last_transition_time
    return Condition(
        type=type_,
        status=verdict.status,
        observed_generation=verdict.observed_generation,
        last_transition_time=transition_time,
        reason=verdict.reason,
        message=_fit_message(verdict.message),
    )


def _deployment_failure(view: DeploymentView | None, *, generation: int) -> _Verdict | None:
    """Degraded=True from the Deployment itself: pods that cannot be created (ReplicaFailure),
    or a rollout past its progress deadline. None while the Deployment reports neither."""
    if view is None:
        return None
    failure = view.replica_failure
    if failure is not None:
        # Said first: its message names what refused the pods (the quota, the limit, the
        # policy), where the deadline's only says that time ran out.
        return _Verdict("True", failure[0], _fit_message(failure[1]), generation)
    if view.deadline_exceeded:
        return _Verdict("True", PROGRESS_DEADLINE_EXCEEDED, view.deadline_message, generation)
    return None


def _degraded_condition(
    outcome: Outcome | None,
    view: DeploymentView | None,
    *,
    generation: int,
    previous: dict[str, Any] | None,
    now: datetime,
) -> Condition:
    """Degraded: a failed reconcile first (nothing else can be fixed before it), then the
    Deployment's own failure, else the last reconcile's success."""
    kept = _parsed(previous) if outcome is None else None
    if kept is not None and kept.reason in _DEPLOYMENT_FAILURE_REASONS:
        # That one came from the Deployment, which is read afresh below.
        kept = None
    if kept is not None and kept.status == "True":
        # No outcome means no news about reconciles (a fold triggered by a pod change, or a
        # freshly started status replica): that must not clear the failure the last one set.
        return kept
    verdict = _degraded(outcome, generation=generation)
    if verdict.status != "True":
        if kept is not None:
            observed = kept.observed_generation
            verdict = _Verdict(
                kept.status, kept.reason, kept.message, generation if observed is None else observed
            )
        verdict = _deployment_failure(view, generation=generation) or verdict
    return _condition(DEGRADED, verdict, previous=previous, now=now)


def fold_status(
    *,
    cr: dict[str, Any],
    deployment: dict[str, Any] | None,
    nodes: list[str],
    outcome: Outcome | None,
    now: datetime,
    endpoints: list[str] | None = None,
) -> dict[str, Any]:
    """The CR's new ``status`` in API shape, from its Deployment, the names of its ready pods
    (:func:`ready_nodes` picks them from a pod list) and its last outcome.

    ``deployment`` is None when it does not exist; one not controlled by this CR (another
    owner's object of the same name) counts as not ours and is not reported on. An outcome
    for another uid (an earlier CR of the same name) or with result "gone" is ignored, and
    so is ``outcome=None``: both keep the previous Degraded condition. Conditions of other
    types, set by someone else, are kept unchanged.
    """
    metadata = cr.get("metadata") or {}
    generation = as_int(metadata.get("generation"))
    uid = metadata.get("uid")
    name = str(metadata.get("name", ""))
    namespace = str(metadata.get("namespace", ""))
    # The schema defaults and bounds size, so the fallback only guards hand-made objects.
    size = max(0, as_int((cr.get("spec") or {}).get("size"), 1))
    previous_status = cr.get("status") or {}
    previous = conditions_by_type(cr)
    if outcome is not None and (outcome.uid != uid or outcome.result == "gone"):
        outcome = None

    view: DeploymentView | None = None
    ref = f"Deployment {namespace}/{name}"
    missing = _Verdict("False", DEPLOYMENT_MISSING, f"{ref} does not exist yet", generation)
    if deployment is not None:
        if uid and not owned_by(deployment, str(uid)):
            missing = _Verdict(
                "False",
                DEPLOYMENT_NOT_OWNED,
                f"{ref} exists but is not controlled by this Memcached",
                generation,
            )
        else:
            view = DeploymentView.of(deployment, size)

    now = _seconds(now)
    degraded = _degraded_condition(
        outcome, view, generation=generation, previous=previous.get(DEGRADED), now=now
    )
    is_degraded = degraded.status == "True"
    conditions = [
        _condition(
            AVAILABLE,
            _available(view, size=size, generation=generation, missing=missing),
            previous=previous.get(AVAILABLE),
            now=now,
        ),
        _condition(
            PROGRESSING,
            _progressing(
                view, size=size, generation=generation, missing=missing, degraded=is_degraded
            ),
            previous=previous.get(PROGRESSING),
            now=now,
        ),
    ]
    conditions.append(degraded)
    for type_, raw in previous.items():
        # The API server validated these on the way in; a malformed entry can only be
        # dropped, since writing it back would fail the whole status write.
        other = _parsed(raw) if type_ not in CONDITION_TYPES else None
        if other is not None:
            conditions.append(other)

    # The CRD bounds status.nodes and lastTraceId, and a write breaking a bound fails whole:
    # pods anyone can annotate as ours beyond NODES_MAX go unlisted, a malformed id unused.
    trace_id = outcome.trace_id if outcome is not None and outcome.trace_id else None
    if trace_id is not None and not re.fullmatch(TRACE_ID_PATTERN, trace_id):
        trace_id = None
    status = MemcachedStatus(
        nodes=sorted(nodes)[:NODES_MAX],
        endpoints=sorted(endpoints or [])[:NODES_MAX],
        endpoint_count=min(len(endpoints or []), NODES_MAX),
        ready_replicas=view.ready if view is not None else 0,
        observed_generation=generation,
        conditions=conditions,
        last_trace_id=trace_id or previous_status.get("lastTraceId") or None,
    )
    return status.to_api()
