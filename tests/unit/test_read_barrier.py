"""The read barrier a request carries (``Mcop-Events-Seq``): a plain sequence number is read as
one; anything else a hostile or broken publisher could put there costs the barrier only."""

from __future__ import annotations

import pytest

from memcached_operator.shared.events import state

pytestmark = pytest.mark.unit


def test_a_request_carries_the_sequence_its_reads_must_include() -> None:
    assert state.after(state.after_header(1234)) == 1234


def test_no_barrier_without_a_stored_event() -> None:
    assert state.after_header(0) == {}
    assert state.after({}) == 0
    assert state.after(None) == 0


@pytest.mark.parametrize("value", ["", "-5", "1e9", " 12", "12a", "9" * 21, "١٢"])
def test_a_malformed_barrier_is_ignored(value: str) -> None:
    assert state.after({state.AFTER_HEADER: value}) == 0
