import pytest

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.watcher.informer import Known, diff


def obj(name: str, uid: str, rv: str) -> dict:  # type: ignore[type-arg]
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": rv}}


@pytest.mark.unit
def test_diff_emits_only_what_the_stream_lacks() -> None:
    known = {
        ObjectKey("ns", "same"): Known("u1", "5"),
        ObjectKey("ns", "changed"): Known("u2", "5"),
        ObjectKey("ns", "gone"): Known("u3", "5"),
        ObjectKey("ns", "recreated"): Known("u4", "5"),
    }
    listed = [
        obj("same", "u1", "5"),
        obj("changed", "u2", "9"),
        obj("new", "u5", "10"),
        obj("recreated", "u6", "11"),
    ]
    changes = [(c, o["metadata"]["name"], o["metadata"]["uid"]) for c, o in diff(known, listed)]
    assert changes == [
        ("modified", "changed", "u2"),
        ("added", "new", "u5"),
        ("deleted", "recreated", "u4"),
        ("added", "recreated", "u6"),
        ("deleted", "gone", "u3"),
    ]


@pytest.mark.unit
def test_diff_of_identical_state_is_empty() -> None:
    known = {ObjectKey("ns", "a"): Known("u", "1")}
    assert diff(known, [obj("a", "u", "1")]) == []
