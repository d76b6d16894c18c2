"""Folding a Memcached's observed world into its ``status``: pure functions, no I/O.

The inputs are the CR, its Deployment and pods as the API serves them and the reconciler's last
published :class:`Outcome`; the output is the status in API shape, with the conditions
Available, Progressing and Degraded under metav1.Condition semantics. Degraded=True says
why nothing converges: a failed or dead-lettered reconcile, else the Deployment's own word
(pods the API refuses, reported as ReplicaFailure within seconds, or the progress deadline).
:func:`status_changed` says whether that status is worth a write, and :func:`transitions`
what deserves an Event.
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
    OWNER_ANNOTATION,
    PROGRESSING,
    owned_by,
)
from memcached_operator.shared.api.models import (
    NODES_MAX,
    TRACE_ID_PATTERN,
    Condition,
    MemcachedStatus,
)
from memcached_operator.shared.api.pods import endpoint, pod_ip, pod_ready
from memcached_operator.shared.events.outcomes import DEAD_LETTERED, Outcome

# Reasons this module sets. The Deployment's own reasons (ProgressDeadlineExceeded) are reused
# where the meaning is the same, so a user who knows Deployments reads them without a glossary.
ALL_REPLICAS_READY = "AllReplicasReady"
REPLICAS_NOT_READY = "ReplicasNotReady"
DEPLOYMENT_MISSING = "DeploymentMissing"
DEPLOYMENT_NOT_OWNED = "DeploymentNotOwned"
DEPLOYMENT_UNAVAILABLE = "DeploymentUnavailable"
WAITING_FOR_DEPLOYMENT = "WaitingForDeployment"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
ROLLOUT_IN_PROGRESS = "RolloutInProgress"
ROLLOUT_COMPLETE = "RolloutComplete"
RECONCILE_FAILED = "ReconcileFailed"
RECONCILE_SUCCEEDED = "ReconcileSucceeded"
NO_FAILURES = "NoFailures"
# The Deployment condition that carries a ReplicaSet's failure to create (or delete) pods, and
# the reason used when its own reason does not fit the Condition grammar.
REPLICA_FAILURE = "ReplicaFailure"
# Degraded reasons that come from the Deployment rather than from a reconcile outcome: they
# are recomputed from the Deployment at every fold, never kept as an outcome's are (a rollout
# that recovered must not stay Degraded for want of a new outcome). FailedCreate and
# FailedDelete are the ReplicaSet controller's reasons.
_DEPLOYMENT_FAILURE_REASONS = frozenset(
    {"FailedCreate", "FailedDelete", REPLICA_FAILURE, PROGRESS_DEADLINE_EXCEEDED}
)

# The Deployment controller's Progressing reasons while a new ReplicaSet is still coming up.
_DEPLOYMENT_ROLLING_REASONS = frozenset(
    {"ReplicaSetUpdated", "NewReplicaSetCreated", "FoundNewReplicaSet"}
)
# metav1.Condition's reason grammar and message limit: a condition that breaks them would make
# the API server reject the whole status write, so outcome text is fitted to them first.
_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")
_REASON_MAX = 1024
_MESSAGE_MAX = 32768


def abnormal(type_: str, status: str, reason: str) -> bool:
    """Whether a condition describes a state the user should look at (a Warning Event)."""
    if type_ == AVAILABLE:
        return status == "False"
    if type_ == PROGRESSING:
        return status == "False" and reason == PROGRESS_DEADLINE_EXCEEDED
    if type_ == DEGRADED:
        return status == "True"
    return False


@dataclass(frozen=True)
class Transition:
    """A condition whose status or reason changed; ``old_status`` and ``old_reason`` are None
    for a new condition."""

    type: str
    old_status: str | None
    new_status: str
    reason: str
    message: str
    old_reason: str | None = None

    @property
    def warning(self) -> bool:
        return abnormal(self.type, self.new_status, self.reason)

    @property
    def newsworthy(self) -> bool:
        """Worth a Kubernetes Event. Each Event costs an API write, so the routine steps of a
        healthy CR are left to its status: the not-yet states a new CR starts with, Available
        moving from one not-ready reason to the next, and a rollout starting or completing.
        News are: Available or Degraded flipping either way (or a CR starting Available or
        Degraded), and a Degraded=True whose reason changed. A rollout that stalls (pods that
        cannot be created, the progress deadline) or recovers is news too, but Degraded says
        so already: the same fact in a Progressing Event would only be a second write."""
        if self.type == PROGRESSING:
            return False
        if self.old_status is None:
            return self.new_status == "True" if self.type == AVAILABLE else self.warning
        if self.old_status != self.new_status:
            return True
        return self.type not in (AVAILABLE, PROGRESSING) and self.warning


@dataclass(frozen=True)
class _Verdict:
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    observed_generation: int


def _as_int(value: Any, default: int = 0) -> int:
    # bool is an int in Python but never a count in the API.
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _conditions_by_type(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return {
        str(c["type"]): c
        for c in conditions
        if isinstance(c, dict) and isinstance(c.get("type"), str)
    }


def _fit_reason(reason: str, fallback: str) -> str:
    reason = reason.strip()
    return reason if len(reason) <= _REASON_MAX and _REASON.fullmatch(reason) else fallback


def _fit_message(message: str) -> str:
    return message if len(message) <= _MESSAGE_MAX else message[: _MESSAGE_MAX - 3] + "..."


def ready_endpoints(cr: dict[str, Any], pods: list[dict[str, Any]]) -> list[str]:
    """Sorted ``host:port`` of the pods :func:`ready_nodes` names that have an IP."""
    names = set(ready_nodes(cr, pods))
    ips = (pod_ip(pod) for pod in pods if (pod.get("metadata") or {}).get("name") in names)
    return sorted({endpoint(ip) for ip in ips if ip})


def ready_nodes(cr: dict[str, Any], pods: list[dict[str, Any]]) -> list[str]:
    """Sorted names of the CR's pods that are Ready and not being deleted.

    A pod counts only when it carries the owner annotation naming this CR (every pod of our
    template does), so pods a label selector happens to catch from elsewhere are left out.
    """
    metadata = cr.get("metadata") or {}
    name, namespace = metadata.get("name"), metadata.get("namespace")
    nodes: set[str] = set()
    for pod in pods:
        pod_meta = pod.get("metadata") or {}
        if (pod_meta.get("annotations") or {}).get(OWNER_ANNOTATION) != name:
            continue
        if namespace and pod_meta.get("namespace") not in (None, namespace):
            continue
        if not pod_ready(pod):
            continue
        if isinstance(pod_meta.get("name"), str):
            nodes.add(pod_meta["name"])
    return sorted(nodes)


@dataclass(frozen=True)
class _DeploymentView:
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
    def of(cls, deployment: dict[str, Any], size: int) -> _DeploymentView:
        status = deployment.get("status") or {}
        conditions = _conditions_by_type(deployment)
        generation = _as_int((deployment.get("metadata") or {}).get("generation"))
        return cls(
            spec_replicas=_as_int((deployment.get("spec") or {}).get("replicas"), size),
            observed=_as_int(status.get("observedGeneration"), -1) >= generation,
            replicas=_as_int(status.get("replicas")),
            updated=_as_int(status.get("updatedReplicas")),
            ready=_as_int(status.get("readyReplicas")),
            available=_as_int(status.get("availableReplicas")),
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
        reason = _fit_reason(str(failure.get("reason") or ""), REPLICA_FAILURE)
        message = str(failure.get("message") or "").strip()
        return reason, message or "the ReplicaSet could not create or delete pods"


def deployment_inputs(deployment: dict[str, Any]) -> tuple[Any, ...]:
    """Everything of a Deployment that :func:`fold_status` reads. Two versions with equal
    inputs fold to the same status, so the watcher asks for no refresh between them (the
    Deployment controller's revision annotation, a condition's lastUpdateTime)."""
    status = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    conditions = _conditions_by_type(deployment)
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
        *(
            (c.get("status"), c.get("reason"), c.get("message"))
            for c in (
                conditions.get("Available") or {},
                conditions.get("Progressing") or {},
                # Without it, a pod the API refuses would reach the status only at the deadline.
                conditions.get(REPLICA_FAILURE) or {},
            )
        ),
    )


def _available(
    view: _DeploymentView | None, *, size: int, generation: int, missing: _Verdict
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
    view: _DeploymentView | None, *, size: int, generation: int, missing: _Verdict, degraded: bool
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
    rolling = view.progressing_condition.get("reason") in _DEPLOYMENT_ROLLING_REASONS
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
        reason = _fit_reason(outcome.reason, RECONCILE_FAILED)
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


def _deployment_failure(view: _DeploymentView | None, *, generation: int) -> _Verdict | None:
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
    view: _DeploymentView | None,
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
    generation = _as_int(metadata.get("generation"))
    uid = metadata.get("uid")
    name = str(metadata.get("name", ""))
    namespace = str(metadata.get("namespace", ""))
    # The schema defaults and bounds size, so the fallback only guards hand-made objects.
    size = max(0, _as_int((cr.get("spec") or {}).get("size"), 1))
    previous_status = cr.get("status") or {}
    previous = _conditions_by_type(cr)
    if outcome is not None and (outcome.uid != uid or outcome.result == "gone"):
        outcome = None

    view: _DeploymentView | None = None
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
            view = _DeploymentView.of(deployment, size)

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


def _normalized_condition(condition: dict[str, Any]) -> dict[str, Any]:
    try:
        return Condition.model_validate(condition).to_api()
    except ValidationError:
        return condition


def _normalized(status: dict[str, Any]) -> dict[str, Any]:
    """The status with conditions as a map by type and timestamps in one format."""
    result = {key: value for key, value in status.items() if value is not None}
    if "conditions" in result:
        # conditions is a list-map keyed by type: its order carries no meaning.
        result["conditions"] = {
            str(c.get("type")): _normalized_condition(c)
            for c in result["conditions"] or []
            if isinstance(c, dict)
        }
    return result


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` over ``old`` would change anything a reader can see.

    Only the fields of ``new`` are compared: a field only ``old`` has is not removed by a
    merge-patch write of ``new`` either, so it is no reason to write.
    """
    if old is None:
        return True
    old_norm, new_norm = _normalized(old), _normalized(new)
    return any(old_norm.get(key) != value for key, value in new_norm.items())


def transitions(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Transition]:
    """The conditions of ``new`` that appeared, flipped status, or changed reason abnormally.

    A reason change without a flip counts when it enters or leaves an abnormal state
    (Progressing=False going from ProgressDeadlineExceeded to RolloutComplete is news,
    Degraded=False going from NoFailures to ReconcileSucceeded is not); a message change alone
    never counts, or every pod that becomes ready would be an Event.
    """
    before = _conditions_by_type({"status": old or {}})
    result: list[Transition] = []
    for condition in new.get("conditions") or []:
        type_, status, reason = condition["type"], condition["status"], condition["reason"]
        previous = before.get(type_)
        old_status = None if previous is None else str(previous.get("status"))
        old_reason = None if previous is None else str(previous.get("reason", ""))
        same_status = previous is not None and old_status == status
        if same_status and (
            old_reason == reason
            or not (abnormal(type_, status, reason) or abnormal(type_, status, old_reason or ""))
        ):
            continue
        result.append(
            Transition(
                type=type_,
                old_status=old_status,
                new_status=status,
                reason=reason,
                message=condition.get("message", ""),
                old_reason=old_reason,
            )
        )
    return result
