"""The yield policy: pause while the other controller has a backlog, then one at a time, back
to full concurrency once its backlog has stayed small; never on a guess."""

from __future__ import annotations

import pytest

from memcached_operator.shared.workqueue.yielding import YieldPolicy

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policy(clock: Clock) -> YieldPolicy:
    return YieldPolicy(concurrency=8, backlog=16, resume=1.0, pause=10.0, interval=0.5, clock=clock)


def test_a_small_backlog_leaves_the_queue_at_full_concurrency() -> None:
    clock = Clock()
    p = policy(clock)
    step = p.observe(16)
    assert (step.limit, step.yielding, step.limit_changed, step.yielding_changed) == (
        8,
        False,
        False,
        False,
    )
    assert step.wait == 0.5


def test_a_backlog_pauses_the_queue_then_lets_one_request_at_a_time_through() -> None:
    clock = Clock()
    p = policy(clock)
    step = p.observe(17)
    assert (step.limit, step.yielding, step.limit_changed, step.yielding_changed) == (
        0,
        True,
        True,
        True,
    )
    assert p.yielding
    clock.now = 9.9
    assert p.observe(500).limit == 0
    clock.now = 10.0
    step = p.observe(500)
    assert (step.limit, step.limit_changed, step.yielding_changed) == (1, True, False)


def test_the_queue_resumes_only_after_the_backlog_stayed_small_for_the_resume_time() -> None:
    clock = Clock()
    p = policy(clock)
    p.observe(100)
    clock.now = 2.0
    assert p.observe(0).yielding  # small since now
    clock.now = 2.9
    assert p.observe(3).yielding
    clock.now = 3.0
    step = p.observe(3)
    assert (step.yielding, step.limit, step.yielding_changed, step.limit_changed) == (
        False,
        8,
        True,
        True,
    )


def test_a_new_backlog_while_calming_down_restarts_the_resume_time() -> None:
    clock = Clock()
    p = policy(clock)
    p.observe(100)
    clock.now = 1.0
    p.observe(0)
    clock.now = 1.5
    p.observe(100)  # the backlog is back
    clock.now = 2.2
    p.observe(0)
    clock.now = 3.1
    assert p.yielding and p.observe(0).yielding  # 0.9 s calm, not 2.1 s
    clock.now = 3.2
    assert not p.observe(0).yielding


def test_an_unreadable_backlog_never_holds_the_queue_back() -> None:
    clock = Clock()
    p = policy(clock)
    p.observe(100)
    step = p.observe(None)
    assert (step.yielding, step.limit, step.warn) == (False, 8, True)
    # One warning per streak of failures, and the polls slow down while it lasts.
    step = p.observe(None)
    assert (step.warn, step.wait) == (False, 1.5)
    assert [p.observe(None).wait for _ in range(30)][-1] == 10.0  # at most 20 intervals
    step = p.observe(0)
    assert (step.warn, step.wait, step.yielding) == (False, 0.5, False)


def test_a_failure_streak_that_ends_warns_again_on_the_next_one() -> None:
    p = policy(Clock())
    assert p.observe(None).warn
    p.observe(0)
    assert p.observe(None).warn
