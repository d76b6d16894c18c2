"""Unit tests of the Event side of the status service: the rate limiter and the Event body.

The limiter decides what a user sees in `kubectl describe` when a CR flaps, so its budget,
refill and duplicate suppression are checked with a fake clock; the body must pass the API
server's validation of events.k8s.io/v1 (names, MicroTime, length limits).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from memcached_operator.status.recorder import (
    Decision,
    EventLimiter,
    build_event,
    event_name,
    event_note,
)
from memcached_operator.status.transitions import Transition

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(clock: FakeClock, **overrides: Any) -> EventLimiter:
    options: dict[str, Any] = {"burst": 5, "refill_seconds": 10.0, "duplicate_window": 60.0}
    options.update(overrides)
    return EventLimiter(clock=clock, **options)


def memcached(name: str = "cache") -> dict[str, Any]:
    return {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": "0b5f0c1e-2d43-4c39-9e31-4f7ad1b0c001",
            "resourceVersion": "4711",
            "generation": 3,
        },
        "spec": {"size": 3},
    }


def stalled() -> Transition:
    return Transition(
        type="Progressing",
        old_status="True",
        new_status="False",
        reason="ProgressDeadlineExceeded",
        message='ReplicaSet "cache-7d9f" has timed out progressing.',
    )


@pytest.mark.unit
def test_burst_then_rate_limited_then_refilled() -> None:
    clock = FakeClock()
    limit = limiter(clock)
    sent = [limit.decide("team-a/cache", "Reason", f"note {i}") for i in range(7)]
    assert sent == [Decision.SEND] * 5 + [Decision.RATE_LIMITED] * 2

    clock.advance(9.9)
    assert limit.decide("team-a/cache", "Reason", "note 7") is Decision.RATE_LIMITED
    clock.advance(0.1)
    assert limit.decide("team-a/cache", "Reason", "note 8") is Decision.SEND
    assert limit.decide("team-a/cache", "Reason", "note 9") is Decision.RATE_LIMITED

    # A refill never exceeds the burst.
    clock.advance(3600)
    sent = [limit.decide("team-a/cache", "Reason", f"later {i}") for i in range(6)]
    assert sent.count(Decision.SEND) == 5


@pytest.mark.unit
def test_buckets_are_per_cr() -> None:
    clock = FakeClock()
    limit = limiter(clock, burst=1)
    assert limit.decide("team-a/one", "Reason", "note") is Decision.SEND
    assert limit.decide("team-a/one", "Reason", "other") is Decision.RATE_LIMITED
    assert limit.decide("team-a/two", "Reason", "note") is Decision.SEND


@pytest.mark.unit
def test_duplicates_within_the_window_are_dropped_without_spending_tokens() -> None:
    clock = FakeClock()
    limit = limiter(clock, burst=2)
    assert limit.decide("team-a/cache", "ReplicasNotReady", "2/3 ready") is Decision.SEND
    for _ in range(10):
        clock.advance(5)
        assert limit.decide("team-a/cache", "ReplicasNotReady", "2/3 ready") is Decision.DUPLICATE
    # Same reason, different note: not a duplicate.
    assert limit.decide("team-a/cache", "ReplicasNotReady", "1/3 ready") is Decision.SEND
    clock.advance(60)
    assert limit.decide("team-a/cache", "ReplicasNotReady", "2/3 ready") is Decision.SEND


@pytest.mark.unit
def test_idle_keys_are_forgotten() -> None:
    clock = FakeClock()
    limit = limiter(clock)
    for i in range(100):
        limit.decide(f"team-a/cache-{i}", "Reason", "note")
    assert len(limit) == 100
    clock.advance(3600)
    limit.decide("team-a/fresh", "Reason", "note")
    assert len(limit) == 1
    limit.forget("team-a/fresh")
    assert len(limit) == 0


@pytest.mark.unit
def test_event_body() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    body = build_event(
        cr=memcached(),
        transition=stalled(),
        instance="status-0",
        now=now,
        suffix="18a2b3c4d5e6f708",
    )
    assert body == {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "cache.18a2b3c4d5e6f708", "namespace": "team-a"},
        "regarding": {
            "apiVersion": "cache.example.com/v1",
            "kind": "Memcached",
            "name": "cache",
            "namespace": "team-a",
            "uid": "0b5f0c1e-2d43-4c39-9e31-4f7ad1b0c001",
            "resourceVersion": "4711",
        },
        "reason": "ProgressDeadlineExceeded",
        "note": 'Progressing is False: ReplicaSet "cache-7d9f" has timed out progressing.',
        "type": "Warning",
        "action": "StatusChanged",
        "reportingController": "memcached-operator/status",
        "reportingInstance": "status-0",
        "eventTime": "2025-03-01T12:00:00.123456Z",
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    ("type_", "status", "reason", "expected"),
    [
        ("Available", "True", "AllReplicasReady", "Normal"),
        ("Available", "False", "ReplicasNotReady", "Warning"),
        ("Progressing", "True", "RolloutInProgress", "Normal"),
        ("Progressing", "False", "RolloutComplete", "Normal"),
        ("Progressing", "False", "ProgressDeadlineExceeded", "Warning"),
        ("Degraded", "True", "OwnershipConflict", "Warning"),
        ("Degraded", "False", "ReconcileSucceeded", "Normal"),
    ],
)
def test_event_type(type_: str, status: str, reason: str, expected: str) -> None:
    transition = Transition(
        type=type_, old_status=None, new_status=status, reason=reason, message="m"
    )
    body = build_event(
        cr=memcached(), transition=transition, instance="i", now=datetime.now(UTC), suffix="ab"
    )
    assert body["type"] == expected


@pytest.mark.unit
def test_long_names_and_notes_fit_the_limits() -> None:
    long_name = "a" * 240 + "." + "b" * 12
    name = event_name(long_name, "0123456789abcdef")
    assert len(name) <= 253
    assert name.endswith(".0123456789abcdef")
    assert DNS_SUBDOMAIN.match(name)
    # A cut that would end on a dot or dash is trimmed back to a valid name.
    name = event_name("x" * 235 + "-" + "y" * 30, "0123456789abcdef")
    assert DNS_SUBDOMAIN.match(name) and len(name) <= 253

    long_message = Transition(
        type="Degraded",
        old_status="False",
        new_status="True",
        reason="InvalidSpec",
        message="ü" * 2000,
    )
    note = event_note(long_message)
    assert len(note.encode("utf-8")) <= 1024
    assert note.startswith("Degraded is True: ü")
    assert note.endswith("...")
