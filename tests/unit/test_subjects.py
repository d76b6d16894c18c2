import pytest

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.subjects import ObjectKey

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


@pytest.mark.unit
@pytest.mark.parametrize(
    "name", ["a", "cache", "a.b-c", "0.0.0.0", "a" * 253, ".".join(["a"] * 127)]
)
def test_kubernetes_object_names_are_accepted(name: str) -> None:
    assert subjects.is_object_name(name)
    assert subjects.object_key("ns", name) == ObjectKey("ns", name)


@pytest.mark.unit
@pytest.mark.parametrize(
    "name", ["", "A", "a_b", "-a", "a-", "a..b", ".a", "a" * 254, "日本語", "a b", "x" * 5000]
)
def test_what_is_not_a_kubernetes_object_name_is_rejected(name: str) -> None:
    assert not subjects.is_object_name(name)
    with pytest.raises(subjects.InvalidObjectKey, match="not a valid object name"):
        subjects.object_key("ns", name)


@pytest.mark.unit
@pytest.mark.parametrize("namespace", ["", "a.b", "A", "a" * 64])
def test_a_namespace_is_a_dns_label(namespace: str) -> None:
    assert not subjects.is_namespace(namespace)
    with pytest.raises(subjects.InvalidObjectKey, match="not a valid namespace"):
        subjects.object_key(namespace, "cache")


@pytest.mark.unit
def test_the_longest_valid_keys_fit_well_within_the_servers_control_line() -> None:
    # Dots escape to three characters each: the worst case of a valid name.
    worst = ObjectKey("n" * 63, ".".join(["a"] * 127))
    subj = subjects.subject(subjects.REQUESTS, "reconcile", worst)
    assert len(subj) <= subjects.MAX_SUBJECT_LENGTH <= 4096 // 2
    assert subjects.parse(subj).key == worst


@pytest.mark.unit
def test_an_over_long_name_raises_before_it_becomes_a_subject() -> None:
    # The attack of issue 15: a 5,000-character owner name would make nats-server close the
    # connection ("maximum control line exceeded").
    with pytest.raises(subjects.SubjectTooLong, match=r"\(5000 characters\)"):
        subjects.subject(subjects.REQUESTS, "reconcile", ObjectKey("ns", "x" * 5000))
    # Escaping can triple a name that is short enough as text.
    with pytest.raises(subjects.SubjectTooLong, match="escaped"):
        subjects.encode_token("." * 300)
    assert subjects.encode_token("a" * subjects.MAX_TOKEN_LENGTH)
    with pytest.raises(subjects.SubjectTooLong):
        subjects.encode_token("a" * (subjects.MAX_TOKEN_LENGTH + 1))
    # Error messages quote a bounded, escaped excerpt, never the whole input.
    with pytest.raises(subjects.SubjectTooLong) as err:
        subjects.encode_token("\n" * 5000)
    assert len(str(err.value)) < 300 and "\n" not in str(err.value)
