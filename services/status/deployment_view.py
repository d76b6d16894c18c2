"""What the status is folded from a Deployment: a view of its counts and conditions.

:class:`DeploymentView` holds the few numbers and conditions of a Deployment that the CR's
conditions are computed from (conditions.py); :func:`deployment_inputs` is everything of a
Deployment the fold reads, so that the watcher asks for no status refresh when none of it
changed (watches.py). Values come from the API as anyone wrote them, so every number is read
defensively (:func:`as_int`) and every reason fitted to the Condition grammar (:func:`fit_reason`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The Deployment controller's reason when a rollout did not progress within its deadline (kept
# as is in our conditions, so a user who knows Deployments reads it without a glossary).
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
# The Deployment condition that carries a ReplicaSet's failure to create (or delete) pods, and
# the reason used when its own reason does not fit the Condition grammar.
REPLICA_FAILURE = "ReplicaFailure"
# The Deployment controller's Progressing reasons while a new ReplicaSet is still coming up.
ROLLING_REASONS = frozenset({"ReplicaSetUpdated", "NewReplicaSetCreated", "FoundNewReplicaSet"})
# metav1.Condition's reason grammar and length: a condition that breaks them would make the API
# server reject the whole status write, so a reason someone else wrote is fitted to them first.
_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")
_REASON_MAX = 1024


def as_int(value: Any, default: int = 0) -> int:
    # bool is an int in Python but never a count in the API.
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def conditions_by_type(obj: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``status.conditions`` of any object (a Deployment, a Memcached) by type."""
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return {
        str(c["type"]): c
        for c in conditions
        if isinstance(c, dict) and isinstance(c.get("type"), str)
    }


def fit_reason(reason: str, fallback: str) -> str:
    reason = reason.strip()
    return reason if len(reason) <= _REASON_MAX and _REASON.fullmatch(reason) else fallback


@dataclass(frozen=True)
class DeploymentView:
    """The few numbers and conditions of a Deployment that the conditions are computed from."""

    spec_replicas: int
    observed: bool
    replicas: int
    updated: int
    ready: int
    available: int
    available_condition: dict[str, Any]
    progressing_condition: dict[str, Any]
    replica_failure_condition: dict[str, Any]

    @classmethod
    def of(cls, deployment: Mapping[str, Any], size: int) -> DeploymentView:
        status = deployment.get("status") or {}
        conditions = conditions_by_type(deployment)
        generation = as_int((deployment.get("metadata") or {}).get("generation"))
        return cls(
            spec_replicas=as_int((deployment.get("spec") or {}).get("replicas"), size),
            observed=as_int(status.get("observedGeneration"), -1) >= generation,
            replicas=as_int(status.get("replicas")),
            updated=as_int(status.get("updatedReplicas")),
            ready=as_int(status.get("readyReplicas")),
            available=as_int(status.get("availableReplicas")),
            available_condition=conditions.get("Available") or {},
            progressing_condition=conditions.get("Progressing") or {},
            replica_failure_condition=conditions.get(REPLICA_FAILURE) or {},
        )

    @property
    def deadline_exceeded(self) -> bool:
        # The condition is only current once the controller has seen the latest spec; before
        # that a new rollout is about to reset it.
        return (
            self.observed and self.progressing_condition.get("reason") == PROGRESS_DEADLINE_EXCEEDED
        )

    @property
    def rolling(self) -> bool:
        """The Deployment says a new ReplicaSet is still coming up (read only once the
        controller has observed the Deployment's spec, where the fold reads it)."""
        return self.progressing_condition.get("reason") in ROLLING_REASONS

    @property
    def deadline_message(self) -> str:
        message = str(self.progressing_condition.get("message") or "").strip()
        return message or "the rollout did not progress within its progress deadline"

    @property
    def replica_failure(self) -> tuple[str, str] | None:
        """(reason, message) of the Deployment's ReplicaFailure=True: its ReplicaSet cannot
        create (or delete) pods, e.g. a pod refused by a quota, a LimitRange or Pod Security
        admission. The Deployment controller copies it from the ReplicaSet within seconds,
        and removes it once a pod creation succeeds; it says why long before the deadline."""
        failure = self.replica_failure_condition
        if failure.get("status") != "True":
            return None
        reason = fit_reason(str(failure.get("reason") or ""), REPLICA_FAILURE)
        message = str(failure.get("message") or "").strip()
        return reason, message or "the ReplicaSet could not create or delete pods"


def deployment_inputs(deployment: Mapping[str, Any]) -> tuple[Any, ...]:
    """Everything of a Deployment that :func:`fold_status` reads, as the fold reads it. Two
    versions with equal inputs fold to the same status, so the watcher asks for no refresh
    between them: the Deployment controller's revision annotation, a condition's
    lastUpdateTime, the Available condition's reason, and the Progressing condition's reason
    and message except where the fold looks at them (a deadline exceeded; a new ReplicaSet
    still rolling, once the controller has observed the spec). Its first status update of a
    new Deployment, Progressing=True before anything is observed, wakes nothing."""
    status = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    view = DeploymentView.of(deployment, size=0)
    available = view.available_condition
    available_true = available.get("status") == "True"
    return (
        meta.get("generation"),
        meta.get("deletionTimestamp"),
        tuple(r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("controller")),
        (deployment.get("spec") or {}).get("replicas"),
        *(
            status.get(field)
            for field in (
                "observedGeneration",
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
            )
        ),
        available_true,
        None if available_true else available.get("message"),
        view.deadline_exceeded,
        view.deadline_message if view.deadline_exceeded else None,
        view.observed and view.rolling,
        # Without it, a pod the API refuses would reach the status only at the deadline.
        tuple(view.replica_failure_condition.get(f) for f in ("status", "reason", "message")),
    )
