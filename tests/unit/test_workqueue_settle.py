"""The result switch: what a run returned or raised decides ack, a marked copy, nak, term or
dead letter, and the headers of the copies carry the counts the next attempt needs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.kube.client import ApiError
from memcached_operator.shared.runtime.errors import PermanentError, TransientError
from memcached_operator.shared.workqueue.settle import (
    DeadLetter,
    LeaseLostRetry,
    RetryFailure,
    RetryTransient,
    SettlePolicy,
    Succeed,
    Terminate,
    requeue_headers,
    retry_headers,
)
from memcached_operator.shared.workqueue.types import Request, Result

pytestmark = pytest.mark.unit

POLICY = SettlePolicy(max_deliveries=3, backoff_base=0.2, backoff_cap=60.0, jitter=lambda: 0.0)


def request(*, delivery: int = 1, retries: int = 0, **headers: str) -> Request:
    return Request(
        key=ObjectKey("ns", "a"),
        controller="reconcile",
        headers={"Mcop-Origin": "watcher:resync", **headers},
        body=b"",
        delivery=delivery,
        published_at=datetime(2026, 1, 1, tzinfo=UTC),
        sequence=42,
        retries=retries,
    )


def test_a_result_is_acked_and_labelled_as_controller_runtime_does() -> None:
    assert POLICY.settle(request(), Result()) == Succeed(None)
    assert Succeed(None).result == "success"
    assert POLICY.settle(request(), Result(requeue_after=5)) == Succeed(5)
    assert Succeed(5).result == "requeue_after"
    assert Succeed(0).result == "requeue"


def test_a_handler_cancelled_because_its_lease_was_lost_is_naked_after_the_base_delay() -> None:
    assert POLICY.settle(request(), asyncio.CancelledError(), lease_lost=True) == LeaseLostRetry(
        0.2
    )


def test_a_cancellation_that_is_not_a_lost_lease_is_not_the_runs_to_settle() -> None:
    with pytest.raises(asyncio.CancelledError):
        POLICY.settle(request(), asyncio.CancelledError())


def test_a_permanent_error_terminates_and_one_blaming_the_message_is_dead_lettered() -> None:
    invalid = PermanentError("InvalidSpec", "spec.size: must be positive")
    assert POLICY.settle(request(), invalid) == Terminate(invalid)
    forged = PermanentError("ForgedMessage", "not ours", dead_letter=True)
    assert POLICY.settle(request(), forged) == DeadLetter(forged)


def test_a_transient_failure_is_retried_by_its_own_count_not_the_delivery_count() -> None:
    settled = POLICY.settle(request(delivery=3, retries=4), TransientError("API server down"))
    assert isinstance(settled, RetryTransient)
    # The fifth transient retry: base * 2**4 = 3.2 s ceiling, equal jitter at 0 is half.
    # (At max_deliveries, and still no dead letter: a transient failure does not count.)
    assert (settled.retries, settled.delay) == (5, pytest.approx(1.6))


def test_a_server_retry_after_wins_over_the_backoff() -> None:
    settled = POLICY.settle(request(), TransientError("slow down", retry_after=7.0))
    assert isinstance(settled, RetryTransient) and settled.delay == pytest.approx(7.0)


def test_errors_of_the_transient_kind_from_any_library_are_retried_as_transient() -> None:
    assert isinstance(POLICY.settle(request(), TimeoutError()), RetryTransient)
    throttled = ApiError(429, "too many requests", retry_after=2.0)
    settled = POLICY.settle(request(), throttled)
    assert isinstance(settled, RetryTransient) and settled.delay == pytest.approx(2.0)


def test_a_failure_of_the_handler_counts_and_is_dead_lettered_at_max_deliveries() -> None:
    boom = RuntimeError("bug")
    settled = POLICY.settle(request(delivery=2), boom)
    assert settled == RetryFailure(boom, pytest.approx(0.2))  # ceiling 0.4, half of it
    assert POLICY.settle(request(delivery=3), boom) == DeadLetter(boom)
    # An API rejection a handler lets through unclassified is a failure too (it counts).
    rejected = ApiError(422, "invalid", retry_after=None)
    assert isinstance(POLICY.settle(request(), rejected), RetryFailure)


def test_a_requeue_copy_starts_afresh_and_is_due_after_the_delay() -> None:
    old = request(
        **{
            "Mcop-Not-Before": "1.0",
            "Mcop-Failures": "2",
            "Mcop-Transient-Retries": "3",
            "Nats-Msg-Id": "abc",
            "traceparent": "00-1-2-01",
        }
    )
    headers = requeue_headers(old, 5.0, now=1000.0)
    assert headers == {
        "Mcop-Origin": "watcher:resync",
        "traceparent": "00-1-2-01",
        "Mcop-Not-Before": "1005.000",
        # Only while this request is still the newest of its object.
        "Nats-Expected-Last-Subject-Sequence": "42",
    }
    assert "Mcop-Not-Before" not in requeue_headers(old, 0, now=1000.0)


def test_a_transient_retry_copy_carries_the_counted_failures_and_its_own_count() -> None:
    retry = RetryTransient(TransientError("down"), retries=2, delay=1.5)
    headers = retry_headers(request(delivery=3, **{"Nats-Msg-Id": "x"}), retry, now=1000.0)
    assert headers == {
        "Mcop-Origin": "watcher:resync",
        "Mcop-Not-Before": "1001.500",
        "Mcop-Transient-Retries": "2",
        "Mcop-Failures": "2",  # this attempt does not count; the two before it did
        "Nats-Expected-Last-Subject-Sequence": "42",
    }


def test_a_retry_whose_copy_was_not_published_backs_off_by_deliveries() -> None:
    """NATS failing under a request (a stream electing a leader) fails the marked copy too; the
    nak then counts a delivery. Were each one to wait only the first transient delay, a NATS
    outage of a second or two would dead-letter every request it hit (a 3-node chaos run did);
    waiting as counted failures do, the deliveries last through a minute of outage."""
    policy = SettlePolicy(max_deliveries=10, backoff_base=0.2, backoff_cap=60.0, jitter=lambda: 0.0)
    error = TransientError("nats: no response from stream")
    waited = 0.0
    for delivery in range(1, 11):
        # The copy never reaches the stream: every delivery is still transient retry 1.
        retry = policy.transient(request(delivery=delivery), error)
        assert retry.retries == 1
        waited += policy.uncopied(request(delivery=delivery), retry)
    assert waited > 50.0
    assert policy.uncopied(request(delivery=1), retry) >= retry.delay
