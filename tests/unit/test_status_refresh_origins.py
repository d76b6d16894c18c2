"""The status service counts its refreshes by the origin of their request
(``mcop_status_refreshes_by_origin_total``): the origins the watcher and the reconciler write
are labels as they are, anything else in the header is "other", so a request publisher cannot
add series."""

from __future__ import annotations

import pytest

from memcached_operator.shared.workqueue.types import ORIGIN
from memcached_operator.status.service import ORIGINS, origin_label

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "origin",
    [
        "watcher:deployment.added",
        "watcher:deployment.modified",
        "watcher:pod.modified",
        "reconciler:success",
        "reconciler:error",
        "reconciler:gone",
    ],
)
def test_the_pipelines_own_origins_are_labels(origin: str) -> None:
    assert origin_label({ORIGIN: origin}) == origin


@pytest.mark.parametrize(
    "headers",
    [{}, {ORIGIN: ""}, {ORIGIN: "watcher:pod.exploded"}, {ORIGIN: "x" * 10_000}, None],
)
def test_any_other_origin_is_other(headers: dict[str, str] | None) -> None:
    assert origin_label(headers) == "other"


def test_the_labels_are_a_small_fixed_set() -> None:
    assert len(ORIGINS) == 10  # 2 kinds x 3 changes, and 4 outcome results
