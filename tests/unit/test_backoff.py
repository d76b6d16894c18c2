"""The retry delay of the work queue: capped exponential backoff with equal jitter."""

from __future__ import annotations

import pytest

from memcached_operator.shared.runtime.backoff import backoff_delay, retry_delay

pytestmark = pytest.mark.unit


def test_ceiling_doubles_per_attempt_until_the_cap() -> None:
    ceilings = [backoff_delay(n, base=0.2, cap=5.0, jitter=0.999999) for n in range(1, 9)]
    assert ceilings == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0], rel=1e-5)


def test_jitter_keeps_at_least_half_the_ceiling() -> None:
    for attempt in range(1, 10):
        ceiling = min(5.0, 0.2 * 2 ** (attempt - 1))
        low = backoff_delay(attempt, base=0.2, cap=5.0, jitter=0.0)
        mid = backoff_delay(attempt, base=0.2, cap=5.0, jitter=0.5)
        assert low == pytest.approx(ceiling / 2)
        assert low < mid < ceiling


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    assert backoff_delay(10_000, base=0.2, cap=60.0, jitter=0.0) == pytest.approx(30.0)
    assert backoff_delay(0, base=0.2, cap=60.0, jitter=0.0) == pytest.approx(0.1)


def test_retry_after_from_the_server_is_a_minimum_beyond_the_cap() -> None:
    kwargs = {"attempt": 1, "base": 0.2, "cap": 60.0}
    assert retry_delay(**kwargs, retry_after=120.0, jitter=0.0) == pytest.approx(120.0)
    assert 120.0 < retry_delay(**kwargs, retry_after=120.0, jitter=0.9) <= 132.0
    assert retry_delay(**kwargs, retry_after=-3.0, jitter=0.5) == 0.0


def test_without_retry_after_the_backoff_applies() -> None:
    delay = retry_delay(attempt=3, base=0.2, cap=60.0, retry_after=None, jitter=0.0)
    assert delay == pytest.approx(0.4)
