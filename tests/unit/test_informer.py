import pytest

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.kube.client import JsonObject
from memcached_operator.watcher.informer import Known, deletions, diff_page


def obj(name: str, uid: str, rv: str) -> dict:  # type: ignore[type-arg]
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": rv}}


def diff(known: dict[ObjectKey, Known], *pages: list[JsonObject]) -> list[tuple[str, JsonObject]]:
    """A relist's changes: each page's, then the deletions."""
    seen: set[ObjectKey] = set()
    changes = [change for page in pages for change in diff_page(known, page, seen)]
    return changes + deletions(known, seen)


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


@pytest.mark.unit
def test_a_list_in_pages_makes_the_changes_of_one_page() -> None:
    # An object is deleted only when no page had it, not when the page read so far lacks it.
    known = {ObjectKey("ns", "a"): Known("u1", "1"), ObjectKey("ns", "z"): Known("u2", "1")}
    listed = [obj("a", "u1", "2"), obj("b", "u3", "3"), obj("z", "u2", "1")]
    assert diff(known, listed[:1], listed[1:]) == diff(known, listed)
    assert [c for c, _ in diff(known, listed[:2], listed[2:])] == ["modified", "added"]
