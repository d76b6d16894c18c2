"""Which reconcile outcomes tell a reader something new (only those are stored again)."""

from __future__ import annotations

import datetime as dt

import pytest

from memcached_operator.shared.events.outcomes import Outcome

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def outcome(**changes: object) -> Outcome:
    base: dict[str, object] = {
        "key": "ns/cache",
        "uid": "u-1",
        "generation": 3,
        "result": "success",
        "time": NOW,
        "trace_id": "a" * 32,
        "duration_seconds": 0.01,
    }
    return Outcome.model_validate({**base, **changes})


def test_the_same_verdict_later_in_another_trace_is_no_news() -> None:
    later = outcome(time=NOW + dt.timedelta(minutes=5), trace_id="b" * 32, duration_seconds=1.0)
    assert later.same_news(outcome())


@pytest.mark.parametrize(
    "changes",
    [
        {"generation": 4},
        {"uid": "u-2"},
        {"result": "error", "reason": "InvalidSpec", "message": "spec.size: too large"},
        {"key": "ns/other"},
    ],
)
def test_a_new_generation_object_or_verdict_is_news(changes: dict[str, object]) -> None:
    assert not outcome(**changes).same_news(outcome())


def test_an_error_repeated_word_for_word_is_no_news_but_another_message_is() -> None:
    error = {"result": "error", "reason": "InvalidSpec", "message": "spec.size: too large"}
    assert outcome(**error).same_news(outcome(**error))
    assert not outcome(**{**error, "message": "spec.image: bad"}).same_news(outcome(**error))


def test_nothing_stored_is_no_reason_to_skip() -> None:
    assert not outcome().same_news(None)
