"""What the reconciler believes of a streamed CR (services/reconciler/verify.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from memcached_operator.reconciler.verify import ForgedMessage, authoritative, check_event
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events

pytestmark = pytest.mark.unit

KEY = ObjectKey("team-a", "cache")


def _cr(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "team-a",
            "name": "cache",
            "uid": "u-1",
            "resourceVersion": "41",
            "generation": 2,
            **meta,
        },
        "spec": {"size": 2, "image": "memcached:1.6"},
    }


def _headers(obj: dict[str, Any]) -> dict[str, str]:
    headers, _ = events.encode(kind="memcached", change="modified", obj=obj)
    return headers


def test_a_genuine_event_passes() -> None:
    obj = _cr()
    check_event(KEY, _headers(obj), obj)


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("namespace", "kube-system", "key"),
        ("name", "other", "key"),
        ("uid", "u-2", "uid"),
        ("resourceVersion", "99", "resource_version"),
    ],
)
def test_a_body_that_contradicts_its_subject_or_headers_is_forged(
    field: str, value: str, what: str
) -> None:
    genuine = _cr()
    headers = _headers(genuine)
    forged = copy.deepcopy(genuine)
    forged["metadata"][field] = value
    with pytest.raises(ForgedMessage) as caught:
        check_event(KEY, headers, forged)
    assert caught.value.what == what
    assert caught.value.reason == "ForgedEvent"
    assert caught.value.dead_letter


def test_same_version_with_another_spec_is_forged() -> None:
    api = _cr()
    streamed = copy.deepcopy(api)
    streamed["spec"]["image"] = "evil:1"
    with pytest.raises(ForgedMessage, match="in spec"):
        authoritative(KEY, streamed, api)


def test_same_version_with_other_labels_is_forged() -> None:
    api = _cr()
    streamed = _cr(labels={"x": "y"})
    with pytest.raises(ForgedMessage, match=r"metadata\.labels"):
        authoritative(KEY, streamed, api)


@pytest.mark.parametrize("meta", [{"resourceVersion": "40"}, {"uid": "u-0"}])
def test_an_older_or_other_incarnation_yields_the_api_copy(meta: dict[str, str]) -> None:
    api = _cr()
    streamed = _cr(**meta)
    streamed["spec"]["image"] = "evil:1"
    assert authoritative(KEY, streamed, api) is api


def test_the_same_object_yields_the_api_copy() -> None:
    api = _cr()
    assert authoritative(KEY, copy.deepcopy(api), api) is api
