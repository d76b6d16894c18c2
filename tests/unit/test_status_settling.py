"""When a status refresh is a step early and leaves the write to the step under way, and
for how long."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
from opentelemetry.context import Context

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.status.conditions import fold_status
from memcached_operator.status.service import StatusRefresher, StoredOutcome

pytestmark = pytest.mark.unit

KEY = ObjectKey("team-a", "cache")
UID = "0b5f0c1e-2d43-4c39-9e31-4f7ad1b0c001"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refresher(settle: float = 30.0, clock: Clock | None = None) -> StatusRefresher:
    none: Any = None
    return StatusRefresher(
        none,
        none,
        recorder=none,
        min_interval=1.0,
        pods=cast(Any, None),
        settle=settle,
        clock=clock or Clock(),
    )


def cr(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "cache", "namespace": "team-a", "uid": UID, "generation": generation},
        "spec": {"size": 1},
    }
    if status is not None:
        obj["status"] = status
    return obj


def deployment(ready: int = 0) -> dict[str, Any]:
    return {
        "metadata": {
            "generation": 1,
            "ownerReferences": [{"uid": UID, "controller": True, "kind": "Memcached"}],
        },
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": ready},
    }


def stored(generation: int = 1, *, age: float = 0.0) -> StoredOutcome:
    outcome = Outcome(
        key="team-a/cache",
        uid=UID,
        generation=generation,
        result="success",
        time=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age),
    )
    return StoredOutcome(outcome, 1, Context())


def fold(obj: dict[str, Any], dep: dict[str, Any] | None, nodes: list[str]) -> dict[str, Any]:
    return fold_status(
        cr=obj, deployment=dep, nodes=nodes, outcome=None, now=dt.datetime.now(dt.UTC)
    )


def test_an_applied_deployment_not_streamed_yet_is_left_to_its_own_event() -> None:
    r = refresher()
    new = fold(cr(), None, [])
    assert r._awaiting(KEY, cr(), stored(age=0.5), None, None, new)
    # Long after the outcome, the stream still has no Deployment: report that.
    assert not r._awaiting(KEY, cr(), stored(age=31), None, None, new)


def test_a_deployment_streamed_before_its_outcome_is_left_to_the_outcome() -> None:
    clock = Clock()
    r = refresher(settle=0.2, clock=clock)
    gen2 = cr(generation=2)
    new = fold(gen2, deployment(), [])
    assert r._awaiting(KEY, gen2, stored(generation=1), deployment(), None, new)
    # Once the outcome of this generation is there, or the status already reports it: write.
    assert not r._awaiting(KEY, gen2, stored(generation=2), deployment(), None, new)
    reported = {"observedGeneration": 2}
    assert not r._awaiting(KEY, gen2, stored(generation=1), deployment(), reported, new)
    # An outcome that never comes: the next refresh after the settle time writes.
    assert r._awaiting(KEY, gen2, stored(generation=1), deployment(), None, new)
    clock.now += 0.25  # past the settle time
    assert not r._awaiting(KEY, gen2, stored(generation=1), deployment(), None, new)


def test_newly_ready_pods_wait_for_the_deployment_to_count_them_but_not_for_ever() -> None:
    clock = Clock()
    r = refresher(settle=0.2, clock=clock)
    old = fold(cr(), deployment(ready=0), [])
    new = fold(cr(status=old), deployment(ready=0), ["cache-1"])
    assert r._awaiting(KEY, cr(status=old), stored(), deployment(ready=0), old, new)
    # The Deployment counts the pod: nothing to wait for.
    counted = fold(cr(status=old), deployment(ready=1), ["cache-1"])
    assert not r._awaiting(KEY, cr(status=old), stored(), deployment(ready=1), old, counted)
    # A Deployment that never counts them: the next refresh after the settle time writes.
    assert r._awaiting(KEY, cr(status=old), stored(), deployment(ready=0), old, new)
    clock.now += 0.25  # past the settle time
    assert not r._awaiting(KEY, cr(status=old), stored(), deployment(ready=0), old, new)
