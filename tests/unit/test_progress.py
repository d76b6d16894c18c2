"""Liveness as progress: when the tracker says work is stalled (no I/O involved)."""

from __future__ import annotations

import pytest

from memcached_operator.shared.runtime.progress import Progress

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_process_is_never_stalled() -> None:
    clock = Clock()
    progress = Progress(clock=clock)
    clock.now += 3600
    assert progress.stalled_for() == 0.0
    progress.waiting("publish", 0)
    clock.now += 3600
    assert progress.stalled_for() == 0.0


def test_waiting_work_without_progress_stalls_from_when_it_began_to_wait() -> None:
    clock = Clock()
    progress = Progress(clock=clock)
    clock.now += 500  # idle time does not count
    progress.waiting("publish", 3)
    clock.now += 10
    assert progress.stalled_for() == 10.0
    progress.waiting("publish", 4)  # more work: still the same stall
    clock.now += 5
    assert progress.stalled_for() == 15.0
    assert progress.pending == 4


def test_progress_resets_the_stall_and_done_work_ends_it() -> None:
    clock = Clock()
    progress = Progress(clock=clock)
    progress.waiting("publish", 2)
    clock.now += 100
    progress.progressed()
    assert progress.stalled_for() == 0.0
    clock.now += 7
    assert progress.stalled_for() == 7.0
    progress.waiting("publish", 0)
    assert progress.stalled_for() == 0.0


def test_sources_add_up() -> None:
    clock = Clock()
    progress = Progress(clock=clock)
    progress.waiting("mcop-reconcile", 5)
    progress.waiting("publish", 1)
    progress.waiting("mcop-reconcile", 0)
    clock.now += 20
    assert progress.pending == 1
    assert progress.stalled_for() == 20.0
