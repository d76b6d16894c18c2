"""The lease's pure parts: which releases this process remembers, how a conflict is read,
when a release's marker shows a request overtaken, and how a worker waits for a lease another
run holds."""

from __future__ import annotations

import pytest

from memcached_operator.shared.workqueue.lease import (
    MARKER_TTL,
    Held,
    Markers,
    Overtaken,
    WaitSchedule,
    conflict,
    overtaken,
)
from memcached_operator.shared.workqueue.process_lease import ProcessLeases

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_markers_hold_only_the_last_seconds_releases() -> None:
    clock = Clock()
    markers = Markers(clock=clock)
    for n in range(100):
        markers.wrote(f"reconcile.ns.o{n}", ran=n + 1)
    clock.now += MARKER_TTL + 0.1
    markers.wrote("reconcile.ns.last", ran=500)
    assert len(markers) == 1
    # A second release of one name replaces its marker (the newest run counts).
    markers.wrote("reconcile.ns.last", ran=501)
    assert len(markers) == 1
    assert markers.ran("reconcile.ns.last") == 501


def test_a_marker_remembers_the_request_its_run_was_for_until_it_expires() -> None:
    clock = Clock()
    markers = Markers(clock=clock)
    markers.wrote("reconcile.ns.a", ran=149)
    assert markers.ran("reconcile.ns.a") == 149
    assert markers.ran("reconcile.ns.a") == 149  # asking does not use it up
    assert markers.ran("reconcile.ns.b") == 0
    clock.now += MARKER_TTL
    assert markers.ran("reconcile.ns.a") == 0


@pytest.mark.parametrize(
    ("ran", "sequence", "expected"),
    [
        (149, 145, Overtaken(149)),  # a newer request ran: this one lets go
        ("149", 145, Overtaken(149)),  # as the marker's header carries it
        (145, 145, None),  # its own run (a retaken lease)
        (140, 145, None),  # an older request's run says nothing of this one
        (None, 145, None),  # a marker from before the sequence was written
        ("junk", 145, None),  # not a number: believed to say nothing
        (149, 0, None),  # the request's sequence unknown
    ],
)
def test_a_request_is_overtaken_only_by_a_run_of_a_newer_one(
    ran: int | str | None, sequence: int, expected: Overtaken | None
) -> None:
    assert overtaken(ran, sequence) == expected


@pytest.mark.parametrize("operation", ["DEL", "PURGE"])
def test_a_delete_marker_in_the_way_is_written_over_at_its_revision(operation: str) -> None:
    assert conflict(operation, 77) == 77


@pytest.mark.parametrize("operation", [None, "PUT"])
def test_a_live_lease_in_the_way_means_another_run_holds_the_object(
    operation: str | None,
) -> None:
    assert conflict(operation, 77) is None


def test_waiting_polls_double_from_20ms_up_to_a_quarter_of_the_ttl_with_jitter() -> None:
    schedule = WaitSchedule(ttl=1.0, ack_wait=30.0, clock=Clock(), jitter=lambda: 0.5)
    # With jitter 0.5 each wait is exactly the current poll interval.
    waits = [schedule.next_poll() for _ in range(8)]
    assert waits == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.25, 0.25, 0.25, 0.25])


def test_the_poll_interval_is_capped_at_half_a_second_for_long_ttls() -> None:
    schedule = WaitSchedule(ttl=30.0, ack_wait=30.0, clock=Clock(), jitter=lambda: 0.5)
    waits = [schedule.next_poll() for _ in range(10)]
    assert max(waits) == pytest.approx(0.5)


def test_jitter_spreads_a_poll_between_half_and_one_and_a_half_times_the_interval() -> None:
    low = WaitSchedule(ttl=30.0, ack_wait=30.0, clock=Clock(), jitter=lambda: 0.0)
    high = WaitSchedule(ttl=30.0, ack_wait=30.0, clock=Clock(), jitter=lambda: 0.999)
    assert low.next_poll() == pytest.approx(0.01)
    assert high.next_poll() == pytest.approx(0.02 * 1.499)


def test_a_waiting_worker_sends_an_in_progress_ack_every_third_of_the_ack_wait() -> None:
    clock = Clock()
    schedule = WaitSchedule(ttl=30.0, ack_wait=3.0, clock=clock)
    assert not schedule.progress_due()
    clock.now += 0.9
    assert not schedule.progress_due()
    clock.now += 0.1
    assert schedule.progress_due()
    # The next one is a period after that one, not after the start.
    assert not schedule.progress_due()
    clock.now += 0.99
    assert not schedule.progress_due()
    clock.now += 0.01
    assert schedule.progress_due()


def test_a_held_lease_starts_neither_lost_nor_waited_for() -> None:
    held = Held("reconcile.ns.a", 5, b"{}")
    assert (held.lost, held.waited) == (False, False)


# -- ProcessLeases: the lease of exclusive="process", in this process's memory ----------------


async def test_a_process_lease_is_held_until_its_own_release_and_never_lost() -> None:
    leases = ProcessLeases(ttl=5.0, clock=Clock())
    revision = await leases.try_acquire("status.ns.a", b"", sequence=10)
    assert isinstance(revision, int)
    # Another run of the same object in this process waits; other objects do not.
    assert await leases.try_acquire("status.ns.a", b"", sequence=11) is None
    assert isinstance(await leases.try_acquire("status.ns.b", b"", sequence=12), int)
    assert await leases.refresh("status.ns.a", revision, b"") == revision
    # A release at another revision (a run that no longer holds it) frees nothing.
    await leases.release("status.ns.a", revision + 100, ran=10)
    assert await leases.try_acquire("status.ns.a", b"", sequence=11) is None
    await leases.release("status.ns.a", revision, ran=10)
    assert isinstance(await leases.try_acquire("status.ns.a", b"", sequence=11), int)


async def test_a_process_lease_released_after_a_newer_request_ran_overtakes_older_ones() -> None:
    clock = Clock()
    leases = ProcessLeases(ttl=5.0, clock=clock)
    revision = await leases.try_acquire("status.ns.a", b"", sequence=20)
    assert isinstance(revision, int)
    await leases.release("status.ns.a", revision, ran=20)
    # Request 15, delivered before request 20 replaced it, lets go: 20's run started later.
    assert await leases.try_acquire("status.ns.a", b"", sequence=15) == Overtaken(20)
    # Once the marker's second has passed, an older request runs (a no-op: it reads the newest
    # state), as it would after a run in another process.
    clock.now += MARKER_TTL
    assert isinstance(await leases.try_acquire("status.ns.a", b"", sequence=15), int)
