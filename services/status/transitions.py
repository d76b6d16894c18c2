"""What a new status changes: whether it is worth a write, and which transitions are news.

:func:`status_changed` compares what a reader can see of two statuses (conditions as a map by
type, timestamps in one format); :func:`transitions` lists the conditions that appeared,
flipped, or entered or left an abnormal state, and :class:`Transition` says which of them
deserve a Kubernetes Event (recorder.py writes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from memcached_operator.shared.api.contract import AVAILABLE, DEGRADED, PROGRESSING
from memcached_operator.shared.api.models import Condition
from memcached_operator.status.deployment_view import (
    PROGRESS_DEADLINE_EXCEEDED,
    conditions_by_type,
)


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
    before = conditions_by_type({"status": old or {}})
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
