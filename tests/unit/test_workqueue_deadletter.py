"""The dead-letter record: the request's own headers and body, plus why it was given up."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.runtime.errors import PermanentError, TransientError
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.deadletter import (
    DL_BODY_TRUNCATED,
    REQUEST_TOO_LARGE,
    DeadLetter,
    dead_letter,
    header_value,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


KEY = ObjectKey("ns", "a")


def record(error: Exception, *, key: ObjectKey | None = KEY, **kw: Any) -> DeadLetter:
    args: dict[str, Any] = {
        "controller": Controller("reconcile"),
        "key": key,
        "error": error,
        "subject": "mcop.requests.reconcile.ns.a",
        "headers": {"Mcop-Origin": "watcher:resync", "Nats-Msg-Id": "m1", "traceparent": "t"},
        "body": b'{"n": 1}',
        "deliveries": 10,
        "sequence": 7,
        "worker": "w-1",
        "max_request_bytes": 64 * 1024,
        "now": NOW,
    }
    args.update(kw)
    return dead_letter(**args)


def test_a_request_that_failed_too_often_keeps_its_headers_and_body_and_says_why() -> None:
    dl = record(RuntimeError("boom"))
    assert dl.subject == "mcop.deadletter.reconcile.ns.a"
    assert dl.body == b'{"n": 1}'
    assert dl.reason == "MaxDeliveriesExceeded"
    assert dl.headers == {
        "Mcop-Origin": "watcher:resync",
        "traceparent": "t",
        "Mcop-Deadletter-Reason": "MaxDeliveriesExceeded",
        "Mcop-Deadletter-Error": "RuntimeError('boom')",
        "Mcop-Deadletter-Deliveries": "10",
        "Mcop-Deadletter-Subject": "mcop.requests.reconcile.ns.a",
        "Mcop-Deadletter-Sequence": "7",
        "Mcop-Deadletter-Controller": "reconcile",
        "Mcop-Deadletter-Worker": "w-1",
        "Mcop-Deadletter-Time": "2026-12-02T10:00:00+00:00",
        # JetStream's de-duplication: a retry of the publish is not a second copy.
        "Nats-Msg-Id": "mcop-dl.reconcile.7",
    }


def test_a_permanent_or_transient_error_is_recorded_by_its_reason_and_message() -> None:
    dl = record(PermanentError("ForgedMessage", "uid mismatch", dead_letter=True))
    assert (dl.reason, dl.headers["Mcop-Deadletter-Error"]) == ("ForgedMessage", "uid mismatch")
    dl = record(TransientError("API server down"))
    assert (dl.reason, dl.text) == ("MaxDeliveriesExceeded", "API server down")


def test_a_request_without_a_key_goes_to_the_controllers_placeholder_subject() -> None:
    dl = record(PermanentError("UnparsableSubject", "bad"), key=None, subject="mcop.x")
    assert dl.subject == "mcop.deadletter.reconcile._._"


def test_a_request_too_large_keeps_only_the_start_of_its_body_as_evidence() -> None:
    body = b"x" * 100_000
    dl = record(PermanentError(REQUEST_TOO_LARGE, "too large"), body=body)
    assert dl.body == b"x" * 1024
    assert dl.headers[DL_BODY_TRUNCATED] == "100000"
    # Headers too large to keep are dropped, all but the evidence of their size.
    big = {f"h{n}": "v" * 1000 for n in range(100)}
    dl = record(PermanentError(REQUEST_TOO_LARGE, "too large"), body=body, headers=big)
    assert not any(name.startswith("h") for name in dl.headers)
    assert dl.headers[DL_BODY_TRUNCATED] == "100000"


def test_error_text_is_flattened_to_one_ascii_header_value_of_bounded_length() -> None:
    assert header_value("line one\n  line two\tend") == "line one line two end"
    assert header_value("naïve") == "na\\xefve"
    long = header_value("x" * 5000)
    assert len(long) == 1000 and long.endswith("...")
