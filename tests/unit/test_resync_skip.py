"""Which CRs the watcher's resync leaves alone: dead-lettered at their current generation."""

from __future__ import annotations

from typing import Any

import pytest

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.watcher.resync import DeadLettered, dead_lettered

pytestmark = pytest.mark.unit

KEY = ObjectKey("team-a", "cache")


def cr(
    *, generation: int = 3, reason: str = "DeadLettered", status: str = "True", observed: Any = 3
) -> dict[str, Any]:
    degraded: dict[str, Any] = {
        "type": "Degraded",
        "status": status,
        "reason": reason,
        "message": "gave up after 10 deliveries (RuntimeError: boom)",
        "lastTransitionTime": "2025-03-01T12:00:00Z",
    }
    if observed is not None:
        degraded["observedGeneration"] = observed
    return {
        "metadata": {"namespace": "team-a", "name": "cache", "generation": generation},
        "status": {
            "conditions": [
                {"type": "Available", "status": "False", "reason": "ReplicasNotReady"},
                degraded,
            ]
        },
    }


def test_dead_lettered_at_the_current_generation_is_skipped() -> None:
    assert dead_lettered(cr())


@pytest.mark.parametrize(
    "obj",
    [
        # The spec changed since: the new generation runs normally.
        cr(generation=4),
        # Degraded for another reason: resync is how those recover (e.g. a foreign
        # Deployment deleted, which the watcher does not see).
        cr(reason="OwnershipConflict"),
        cr(reason="FailedCreate"),
        cr(status="False", reason="ReconcileSucceeded"),
        # Which spec it is about cannot be told.
        cr(observed=None),
        cr(observed="3"),
        {"metadata": {"name": "cache", "namespace": "team-a", "generation": 1}},
        {"metadata": {}, "status": {"conditions": "garbage"}},
    ],
)
def test_anything_else_is_resynced(obj: dict[str, Any]) -> None:
    assert not dead_lettered(obj)


def test_the_mark_follows_the_cr() -> None:
    skip = DeadLettered()
    skip.observe(cr(generation=1, observed=1, reason="NoFailures", status="False"))
    assert KEY not in skip and len(skip) == 0
    skip.observe(cr())
    assert KEY in skip and len(skip) == 1
    # The user edits the spec: a new generation is no longer marked.
    skip.observe(cr(generation=4))
    assert KEY not in skip
    skip.observe(cr(generation=4, observed=4))
    assert KEY in skip
    # Deleted (and maybe re-created later under the same name): forgotten.
    skip.observe(cr(generation=4, observed=4), deleted=True)
    assert KEY not in skip and len(skip) == 0
