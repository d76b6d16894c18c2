"""The bench splits the wait for Available in two: until the Deployment itself says Available
(the control plane's part: ReplicaSet, pods, their readiness), and from there to the CR saying
so (the operator's part: watch, stream, status write)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.harness import deployment_available

pytestmark = pytest.mark.unit


def dep(
    *, generation: int = 2, observed: int = 2, ready: int = 3, available: str = "True"
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": 3},
        "status": {
            "observedGeneration": observed,
            "readyReplicas": ready,
            "conditions": [
                {"type": "Progressing", "status": "True"},
                {"type": "Available", "status": available},
            ],
        },
    }


def test_a_deployment_is_available_when_observed_all_ready_and_saying_so() -> None:
    assert deployment_available(dep())


@pytest.mark.parametrize(
    "changes",
    [{"observed": 1}, {"ready": 2}, {"available": "False"}],
    ids=["spec not observed yet", "a replica not ready", "its condition says no"],
)
def test_anything_short_of_that_is_not(changes: dict[str, Any]) -> None:
    assert not deployment_available(dep(**changes))


def test_a_deployment_without_status_is_not() -> None:
    assert not deployment_available({"metadata": {"generation": 1}, "spec": {"replicas": 1}})
