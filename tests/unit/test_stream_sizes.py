"""The stream byte budget: how a size is written and how it is split across the streams."""

from __future__ import annotations

import pytest

from memcached_operator.shared.bus.streams import (
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    LEASES_STREAM,
    REQUESTS_STREAM,
    GiB,
    MiB,
    parse_bytes,
    stream_max_bytes,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("8GiB", 8 * GiB),
        ("512MiB", 512 * MiB),
        ("300KB", 300_000),
        ("300k", 300_000),
        ("1.5GiB", 3 * GiB // 2),
        (" 2 gi ", 2 * GiB),
    ],
)
def test_sizes_are_read_with_binary_and_decimal_units(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "8 parsecs", "1e9"])
def test_a_size_that_is_not_one_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 8GiB"):
        parse_bytes(text)


def test_the_budget_is_split_without_exceeding_it() -> None:
    streams = (EVENTS_STREAM, REQUESTS_STREAM, DEADLETTER_STREAM, LEASES_STREAM)
    for budget in (8 * GiB, 1000, 123_456_789):
        assert sum(stream_max_bytes(s, budget) for s in streams) <= budget
    assert stream_max_bytes(EVENTS_STREAM, 8 * GiB) == 6 * GiB
