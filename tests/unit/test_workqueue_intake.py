"""Intake: the key from the subject, the attempt number from the delivery count and the
queue's headers, and poison refused before any handler sees it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.workqueue import intake
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.types import PoisonRequest, Request

pytestmark = pytest.mark.unit

RECONCILE = Controller("reconcile")
KEY = ObjectKey("ns", "a")


def request_of(headers: dict[str, str], num_delivered: int) -> Request:
    return intake.request_of(
        RECONCILE,
        key=KEY,
        headers=headers,
        body=b"",
        num_delivered=num_delivered,
        published_at=datetime(2026, 1, 1, tzinfo=UTC),
        sequence=3,
    )


def test_the_key_comes_from_a_request_subject_of_this_controller() -> None:
    assert intake.parse_key(RECONCILE, "mcop.requests.reconcile.ns.a") == KEY


@pytest.mark.parametrize(
    "subject",
    ["mcop.requests.status.ns.a", "mcop.outcomes.reconcile.ns.a", "mcop.requests.reconcile.ns"],
)
def test_any_other_subject_is_poison(subject: str) -> None:
    with pytest.raises(PoisonRequest) as raised:
        intake.parse_key(RECONCILE, subject)
    assert raised.value.reason == "UnparsableSubject"


def test_a_first_delivery_is_attempt_one_and_each_redelivery_counts() -> None:
    assert request_of({}, 1).delivery == 1
    assert request_of({}, 4).delivery == 4


def test_a_marked_copy_does_not_count_its_deferral_and_adds_the_earlier_failures() -> None:
    marked = {"Mcop-Not-Before": "1000.0", "Mcop-Failures": "2", "Mcop-Transient-Retries": "5"}
    # Delivery 1 of a marked copy is its deferral; delivery 2 is its first run.
    assert request_of(marked, 1).delivery == 3
    assert request_of(marked, 2).delivery == 3
    assert request_of(marked, 3).delivery == 4
    assert request_of(marked, 2).retries == 5


@pytest.mark.parametrize("value", ["x", "-1", "1e3", "9999999999"])
def test_an_unreadable_count_header_counts_as_zero(value: str) -> None:
    assert request_of({"Mcop-Failures": value}, 1).delivery == 1


def test_not_before_is_read_from_the_queues_header() -> None:
    assert intake.not_before({"Mcop-Not-Before": "12.5"}) == 12.5
    assert intake.not_before({"Mcop-Not-Before": "soon"}) is None
    assert intake.not_before({}) is None


def test_content_checks_refuse_what_a_handler_could_never_handle() -> None:
    def check(body: bytes, headers: dict[str, str], limit: int = 1000) -> str | None:
        r = Request(KEY, "reconcile", headers, body, 1, datetime(2026, 1, 1, tzinfo=UTC), 1)
        try:
            intake.check_content(r, max_request_bytes=limit, required_headers=("Mcop-Origin",))
        except PoisonRequest as err:
            return err.reason
        return None

    ok = {"Mcop-Origin": "test"}
    assert check(b'{"n": 1}', ok) is None
    assert check(b"", ok) is None
    assert check(b"x" * 2000, ok) == "RequestTooLarge"
    assert check(b"", {}) == "MissingHeader"
    assert check(b"[1]", ok) == "MalformedBody"
    assert check(b"\xff", ok) == "MalformedBody"
