"""Unit tests of the NATS permission model of services/admin/nats_auth.py: subject matching as
nats-server does it, the generated table, private inboxes, and what no service may do."""

from __future__ import annotations

from pathlib import Path

import pytest

from memcached_operator.admin import nats_auth, nats_conf, nats_table
from memcached_operator.shared.bus.connection import inbox_prefix

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.*.c", "a.b.c", True),
        ("_INBOX.>", "_INBOX_status.x", False),
        ("$JS.API.CONSUMER.CREATE.S.d.>", "$JS.API.CONSUMER.CREATE.S.d.mcop.requests.x.>", True),
    ],
)
def test_subject_matching_is_nats(pattern: str, subject: str, matches: bool) -> None:
    assert nats_auth.subject_matches(pattern, subject) is matches


def test_each_user_may_subscribe_only_to_its_own_inbox() -> None:
    for u in nats_auth.USERS:
        if u.permissions is None:
            continue
        assert u.permissions.subscribe == (f"{inbox_prefix(u.name)}.>",)
        for other in nats_auth.USERS:
            subject = f"{inbox_prefix(other.name)}.reply"
            assert nats_auth.allowed(u, "sub", subject) is (other is u), (u.name, other.name)
        assert not nats_auth.allowed(u, "sub", "_INBOX.reply")


def test_inbox_prefix_is_one_token() -> None:
    assert inbox_prefix("status") == "_INBOX_status"
    assert inbox_prefix("a.b>*") == "_INBOX_a_b__"
    assert inbox_prefix(None) == "_INBOX"


def test_audit_is_alone_in_its_account_and_imports_only_reads() -> None:
    audit = nats_auth.user("audit")
    assert audit.account == nats_auth.AUDIT_ACCOUNT
    assert [u.name for u in nats_auth.USERS if u.account == nats_auth.AUDIT_ACCOUNT] == ["audit"]
    assert audit.permissions is not None
    assert audit.permissions.publish == nats_auth.AUDIT_IMPORTS
    assert all(".DIRECT.GET." in s for s in nats_auth.AUDIT_IMPORTS)
    block = nats_conf.authorization_block()
    assert block.count("imports: [") == 1 and block.count("exports: [") == 1


def test_the_markdown_table_is_the_permission_model() -> None:
    table = nats_table.markdown_table()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    names = [u.name for u in nats_auth.USERS]
    assert table.splitlines()[0] == "| request | " + " | ".join(names) + " |"
    for verb in ("CREATE", "UPDATE", "DELETE", "PURGE"):
        assert rows[f"`STREAM.{verb}`"].endswith("| — | — | — | — | all |")
    assert rows["`CONSUMER.CREATE` ephemeral"].split(" | ")[4] == "—"  # audit: none at all
    cells = nats_table.table()
    assert cells["publish `mcop.events`"]["watcher"] == ["memcached", "deployment", "pod"]
    assert cells["publish `mcop.events`"]["reconciler"] == []


def test_server_environment_holds_quoted_bcrypt_hashes_not_passwords() -> None:
    env = nats_conf.server_environment({"watcher": "mcopsecret"}, cost=4)
    (value,) = env.values()
    assert value.startswith('"$2') and value.endswith('"') and "mcopsecret" not in value
    import bcrypt

    assert bcrypt.checkpw(b"mcopsecret", value.strip('"').encode())


def test_credentials_generator_gives_fresh_passwords_and_only_hashes_to_the_server() -> None:
    import bcrypt

    from memcached_operator.admin import nats_credentials

    users, server = nats_credentials.secrets(cost=4)
    again, _ = nats_credentials.secrets(cost=4)
    assert users["metadata"]["name"] == "nats-users"
    assert server["metadata"]["name"] == "nats-server-auth"
    passwords = users["stringData"]
    assert set(passwords) == {u.name for u in nats_auth.USERS}
    assert len(set(passwords.values())) == len(passwords)
    assert not set(passwords.values()) & set(again["stringData"].values())
    for u in nats_auth.USERS:
        hashed = server["stringData"][u.password_variable]
        assert passwords[u.name] not in hashed
        assert bcrypt.checkpw(passwords[u.name].encode(), hashed.strip('"').encode())


def test_readme_shows_the_generated_permission_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert nats_table.markdown_table().strip() in readme, (
        "README's NATS permission table differs from the generated one: "
        "python -m memcached_operator.admin.nats_auth --markdown"
    )


# Every kind of object the watcher streams (one subject per object under mcop.events.<kind>).
STREAMED_KINDS = ("memcached", "deployment", "pod", "pdb", "service")


def _event_kinds_read(folder: str) -> set[str]:
    """The kinds a service names in ``state.event_subject("<kind>", ...)``, read from its source
    with ast: what it asks of the event stream by direct get."""
    import ast

    root = Path(__file__).resolve().parents[2] / "services" / folder
    kinds: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "event_subject"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                kinds.add(str(node.args[0].value))
    return kinds


def _direct_gets_of_events(name: str) -> set[str]:
    """The kinds whose per-object direct get on the event stream ``name`` may publish."""
    u = nats_auth.user(name)
    key = f"{nats_table.PROBE_NAMESPACE}.probe"
    return {
        kind
        for kind in STREAMED_KINDS
        if nats_auth.allowed(
            u, "pub", f"{nats_auth.API}.DIRECT.GET.MCOP_EVENTS.mcop.events.{kind}.{key}"
        )
    }


def test_the_reconciler_may_get_exactly_the_kinds_it_reads() -> None:
    """The reconciler reads the CR and each object it owns (the PodDisruptionBudget and the
    Service too) from the stream: when its batched get falls back to one subject at a time, a
    missing grant is a reconcile that never completes, a broader one reads pods it never needs."""
    from memcached_operator.reconciler.reconcile import OWNED
    from memcached_operator.shared.bus.streams import EVENTS_STREAM

    assert EVENTS_STREAM == "MCOP_EVENTS"
    reads = {"memcached", *(kind for kind, _ in OWNED)} | _event_kinds_read("reconciler")
    assert reads == {"memcached", "deployment", "pdb", "service"}
    assert set(nats_auth.RECONCILER_READS) == reads
    assert _direct_gets_of_events("reconciler") == reads


def test_the_status_service_may_get_exactly_the_kinds_it_reads() -> None:
    reads = _event_kinds_read("status")
    assert reads == {"memcached", "deployment"}
    assert set(nats_auth.STATUS_READS) == reads
    assert _direct_gets_of_events("status") == reads
    # The pod index's newest pod event per namespace comes from the stream's leader (a message
    # get: a replica behind it would let a refresh miss a pod change, pod_index.py); of the
    # services only the status service asks for it.
    get = f"{nats_auth.API}.STREAM.MSG.GET.MCOP_EVENTS"
    assert [
        u for u in nats_auth.SERVICE_USERS if nats_auth.allowed(nats_auth.user(u), "pub", get)
    ] == ["status"]


def test_no_other_user_may_get_single_events() -> None:
    assert _direct_gets_of_events("audit") == set()


def test_the_watcher_may_get_the_events_it_publishes() -> None:
    """After a failed publish it asks which of an object's events the stream holds last
    (services/watcher/publisher.py); it replays the whole event stream at start-up anyway."""
    assert _direct_gets_of_events("watcher") == set(STREAMED_KINDS)
