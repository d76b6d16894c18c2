"""The pull bookkeeping of the work queue: when a queue asks for more requests, how many, and
what it stops counting on."""

from __future__ import annotations

import orjson
import pytest

from memcached_operator.shared.workqueue.pull import (
    GRACE,
    PENDING_MESSAGES,
    PullBook,
    next_subject,
    pull_request,
)

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_idle_queue_asks_for_all_its_free_slots_once() -> None:
    book = PullBook(expires=1.0, clock=Clock())
    assert book.to_ask(8) == 8
    book.sent(8)
    assert book.to_ask(8) == 0  # all owed: nothing more to ask for


def test_a_trickle_of_requests_tops_up_from_half_the_slots_not_after_every_run() -> None:
    book = PullBook(expires=1.0, clock=Clock())
    book.sent(book.to_ask(8))
    asked = []
    for _ in range(8):  # one request comes and its run ends, eight times
        book.delivered()
        batch = book.to_ask(8)
        asked.append(batch)
        book.sent(batch)
    assert asked == [0, 0, 0, 4, 0, 0, 0, 4]


def test_a_busy_queue_asks_for_a_slot_as_soon_as_it_frees_when_nothing_is_owed() -> None:
    book = PullBook(expires=1.0, clock=Clock())
    book.sent(book.to_ask(8))
    for _ in range(8):
        book.delivered()
    assert book.to_ask(0) == 0  # every slot running
    assert book.to_ask(1) == 1  # one run ended: a slot must not idle through a backlog


def test_a_pull_request_that_ended_unfilled_is_no_longer_owed() -> None:
    book = PullBook(expires=1.0, clock=Clock())
    book.sent(8)
    book.delivered()
    book.ended({"Status": "408", PENDING_MESSAGES: "7"})
    assert book.outstanding == 0
    assert book.to_ask(8) == 8


def test_an_end_without_a_count_forgets_everything_owed() -> None:
    book = PullBook(expires=1.0, clock=Clock())
    book.sent(8)
    book.ended({"Status": "409", PENDING_MESSAGES: "junk"})
    assert book.outstanding == 0


def test_a_lower_limit_asks_for_nothing_until_it_has_a_free_slot() -> None:
    book = PullBook(expires=1.0, clock=Clock())
    assert book.to_ask(0) == 0
    assert book.to_ask(-3) == 0  # the yield policy lowered the limit below the running runs


def test_what_was_owed_by_pull_requests_whose_end_was_lost_is_forgotten_after_they_expired() -> (
    None
):
    clock = Clock()
    book = PullBook(expires=1.0, clock=clock)
    book.sent(8)
    clock.now += 1.0 + GRACE / 2
    assert book.to_ask(8) == 0  # its end (a 408) may still be on its way
    assert book.open_for() == 0
    clock.now += GRACE
    assert book.to_ask(8) == 8  # no end came: the connection dropped it


def test_open_for_counts_down_to_the_expiry_of_the_last_pull_request() -> None:
    clock = Clock()
    book = PullBook(expires=1.0, clock=clock)
    assert book.open_for() == 0
    book.sent(4)
    clock.now += 0.25
    book.sent(4)
    clock.now += 0.5
    assert book.open_for() == pytest.approx(0.5)
    book.ended({PENDING_MESSAGES: "8"})
    assert book.open_for() == 0


def test_the_pull_request_names_the_consumer_and_its_expiry_in_nanoseconds() -> None:
    assert next_subject("MCOP_REQUESTS", "reconcile") == (
        "$JS.API.CONSUMER.MSG.NEXT.MCOP_REQUESTS.reconcile"
    )
    assert orjson.loads(pull_request(3, expires=1.5)) == {"batch": 3, "expires": 1_500_000_000}
