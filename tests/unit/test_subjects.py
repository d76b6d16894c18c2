import pytest

from shared import subjects
from shared.subjects import ObjectKey

AWKWARD = [
    "simple",
    "with.dots.in.it",
    "a" * 253,
    "x-y-z",
    "0.0.0.0",
    "日本語",
    "with space",
    "tilde~and%percent",
    "star*gt>",
    "_",
    "~2E",
]


@pytest.mark.unit
@pytest.mark.parametrize("name", AWKWARD)
def test_round_trip_awkward_names(name: str) -> None:
    key = ObjectKey("team.a" if "." in name else "default", name)
    subj = subjects.subject(subjects.EVENTS, "Memcached", key)
    tokens = subj.split(".")
    assert len(tokens) == 5, subj
    assert not any(c in subj for c in " *>\t")
    parsed = subjects.parse(subj)
    assert parsed.key == key
    assert parsed.kind == "memcached"
    assert parsed.family == "events"


@pytest.mark.unit
def test_cluster_scoped_and_distinct() -> None:
    a = subjects.subject("events", "node", ObjectKey("", "n1"))
    assert subjects.parse(a).key == ObjectKey("", "n1")
    # Names that differ only in escaped characters stay distinct.
    names = ["a.b", "a-b", "a~2Eb", "a_b", "a/b"]
    subs = {subjects.subject("events", "memcached", ObjectKey("ns", n)) for n in names}
    assert len(subs) == len(names)


@pytest.mark.unit
@pytest.mark.parametrize("token", ["", "a.b", "a*", "x~", "x~zz", "~2"])
def test_decode_rejects_garbage(token: str) -> None:
    with pytest.raises(ValueError):
        subjects.decode_token(token)


@pytest.mark.unit
def test_wildcards() -> None:
    assert subjects.wildcard("events") == "mcop.events.*.*.*"
    assert subjects.wildcard("requests", "reconcile", "prod") == "mcop.requests.reconcile.prod.*"
    assert ObjectKey.parse("ns/name") == ObjectKey("ns", "name")
    assert str(ObjectKey("ns", "name")) == "ns/name"
