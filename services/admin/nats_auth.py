"""The NATS accounts and users of memcached-operator and their permissions, written down once.

One user per service (watcher, reconciler, status), a read-only ``audit`` user and an
unrestricted ``admin`` user for people operating the system. :func:`authorization_block`
renders them as the ``accounts`` block of nats.conf; both the Kubernetes manifests
(``deploy/base/nats/auth.conf``, checked by a test) and the local nats-server use exactly this
text. Passwords are never in it: each is the environment variable ``$NATS_<USER>_PASSWORD``,
which nats-server resolves when it reads its config, and whose value is the password's bcrypt
hash (quoted, see :func:`server_environment`): the server can check a password but holds none.
The services hold their own plain password (a Secret locally generated into the state
directory, in Kubernetes by ``memcached-operator nats-credentials``).

Each allow-list is what the service's code does on NATS and nothing more: the JetStream API
requests it makes (per stream, and per consumer where it has its own), the acks, lease writes
and direct gets of the keyed work queue, and the subjects it publishes. No service may create,
update, purge or delete a stream: the admin creates them (``memcached-operator streams
ensure``); a service may only read their info. Each user receives replies on its own inbox
prefix (``_INBOX_<user>.``, see shared/bus/connection.py), so no user can read another's replies.

The audit user lives in an account of its own, which sees the operator's account only through
two imported services: the batched direct get of the event stream and nothing else. Within one
account NATS permissions cannot make a JetStream user read-only: a request's reply subject is
chosen by the requester, and the server publishes the reply (for a direct get: a stored
message, with its headers) there, where any stream capturing that subject stores it; and a
consumer's create request carries its deliver subject in the body, which permissions cannot
see. Across a service import the server replaces the reply subject by one of its own, and the
audit account has no JetStream API of its own, so it can neither create consumers nor write.
Denies repeat the rules that matter most, so that a later widening of an allow-list cannot
break them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from memcached_operator.shared.api.contract import RECONCILE, STATUS
from memcached_operator.shared.bus.connection import inbox_prefix
from memcached_operator.shared.bus.streams import (
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    LEASES_STREAM,
    LEASES_SUBJECT_PREFIX,
    REQUESTS_STREAM,
)
from memcached_operator.shared.bus.subjects import DEADLETTER, EVENTS, OUTCOMES, PREFIX, REQUESTS
from memcached_operator.shared.workqueue.controller import RECONCILE_CONTROLLER, Controller

AUTH_CONF_PATH = "deploy/base/nats/auth.conf"
REGENERATE = f"python -m memcached_operator.admin.nats_auth > {AUTH_CONF_PATH}"
PASSWORDS_FILE = "nats-passwords.json"
# The operator's account (its streams, the services, the admin) and the audit user's own.
ACCOUNT = "MCOP"
AUDIT_ACCOUNT = "MCOP_AUDIT"
# Work factor of the password hashes: each connection costs the server one comparison.
BCRYPT_COST = 11

API = "$JS.API"
STREAMS = (EVENTS_STREAM, REQUESTS_STREAM, DEADLETTER_STREAM, LEASES_STREAM)
# The work-queue controllers (consumer mcop-<controller> on the requests stream): RECONCILE and
# STATUS, the names of shared/workqueue/controller.py's values.
# What the audit account imports from the operator's: batched direct gets of the event stream.
AUDIT_IMPORTS = (f"{API}.DIRECT.GET.{EVENTS_STREAM}",)


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe to; a deny wins over an allow."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    name: str
    purpose: str
    permissions: Permissions | None = None  # None: everything (in its account)
    account: str = ACCOUNT

    @property
    def password_variable(self) -> str:
        """The environment variable nats-server reads this user's password (hash) from."""
        return f"NATS_{self.name.upper()}_PASSWORD"

    @property
    def inbox(self) -> str:
        """The subjects this user's replies arrive on."""
        return f"{inbox_prefix(self.name)}.>"


def _inbox(user: str) -> str:
    return f"{inbox_prefix(user)}.>"


def _family(family: str, kind: str = "*") -> str:
    return f"{PREFIX}.{family}.>" if kind == "*" else f"{PREFIX}.{family}.{kind}.>"


# Stream administration is the admin's alone (repeated as a deny for every service).
_NO_STREAM_ADMIN = tuple(
    f"{API}.STREAM.{op}.>" for op in ("CREATE", "UPDATE", "DELETE", "PURGE", "MSG.DELETE")
)


def _stream_info() -> list[str]:
    """Every service checks at start-up and in /readyz that the admin created the streams."""
    return [f"{API}.STREAM.INFO.{s}" for s in STREAMS]


def _ordered_consumer(stream: str) -> list[str]:
    """Replaying a stream with an ordered consumer: an ephemeral consumer (the request subject
    without a name, which the server refuses for durable consumers), its info, and the
    flow-control replies."""
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _work_queue(controller: str) -> list[str]:
    """One controller's share of the keyed work queue (shared/workqueue/): its durable pull
    consumer, acks, its leases, newest-request direct gets, requeued copies, dead letters."""
    durable = Controller.of(controller).durable
    requests = _family(REQUESTS, controller)
    leases = f"{LEASES_SUBJECT_PREFIX}{controller}.>"
    return [
        # The consumer's create request carries its filter subject after its name.
        f"{API}.CONSUMER.CREATE.{REQUESTS_STREAM}.{durable}.>",
        f"{API}.CONSUMER.INFO.{REQUESTS_STREAM}.{durable}",
        f"{API}.CONSUMER.MSG.NEXT.{REQUESTS_STREAM}.{durable}",
        f"$JS.ACK.{REQUESTS_STREAM}.{durable}.>",
        f"{API}.DIRECT.GET.{REQUESTS_STREAM}.{requests}",
        f"{API}.DIRECT.GET.{LEASES_STREAM}.{leases}",
        leases,
        requests,
        _family(DEADLETTER, controller),
    ]


def _observed_state() -> list[str]:
    """Direct gets of the newest Memcached and Deployment events (shared/events/state.py): the
    reconciler and the status service read objects from the stream, not the API server.
    They read several subjects in one batched direct get (shared/bus/directget.py), whose subjects
    are in the request's body: NATS cannot scope that permission by subject, so it grants
    reads of the whole event stream (the operator's own audit log). The per-subject grants
    are for servers without batched gets."""
    return [
        f"{API}.DIRECT.GET.{EVENTS_STREAM}",
        *(
            f"{API}.DIRECT.GET.{EVENTS_STREAM}.{_family(EVENTS, kind)}"
            for kind in ("memcached", "deployment")
        ),
    ]


USERS: tuple[User, ...] = (
    User(
        "watcher",
        "publishes watched changes and reconcile/status requests; replays events at start-up; "
        "dead-letters what it cannot publish",
        Permissions(
            publish=(
                _family(EVENTS),
                _family(REQUESTS),
                # services/watcher/publisher.py: a message the server would refuse.
                _family(DEADLETTER, "watcher"),
                *_stream_info(),
                *_ordered_consumer(EVENTS_STREAM),
            ),
            subscribe=(_inbox("watcher"),),
            publish_deny=_NO_STREAM_ADMIN,
        ),
    ),
    User(
        "reconciler",
        "takes reconcile requests; publishes outcomes and status requests, never events",
        Permissions(
            publish=(
                _family(OUTCOMES, RECONCILE),
                _family(REQUESTS, STATUS),
                *_stream_info(),
                *_work_queue(RECONCILE),
                *_observed_state(),
                # Its newest outcome of a CR: an unchanged one is not stored again.
                f"{API}.DIRECT.GET.{EVENTS_STREAM}.{_family(OUTCOMES, RECONCILE)}",
            ),
            subscribe=(_inbox("reconciler"),),
            publish_deny=(_family(EVENTS), *_NO_STREAM_ADMIN),
        ),
    ),
    User(
        "status",
        "takes status requests; reads the newest outcome of a CR and follows the pod events; "
        "publishes no events",
        Permissions(
            publish=(
                *_stream_info(),
                *_work_queue(STATUS),
                f"{API}.DIRECT.GET.{EVENTS_STREAM}.{_family(OUTCOMES, RECONCILE)}",
                *_observed_state(),
                # The pod index (services/status/pod_index.py): an ordered consumer of the pod
                # events and a direct get of the newest one per namespace.
                *_ordered_consumer(EVENTS_STREAM),
                f"{API}.DIRECT.GET.{EVENTS_STREAM}.{_family(EVENTS, 'pod')}",
                # Yielding to the reconciler's backlog (shared/workqueue/yielding.py): its
                # consumer's info, which holds the count of requests waiting for a worker.
                f"{API}.CONSUMER.INFO.{REQUESTS_STREAM}.{RECONCILE_CONTROLLER.durable}",
            ),
            subscribe=(_inbox("status"),),
            publish_deny=(_family(EVENTS), _family(OUTCOMES), *_NO_STREAM_ADMIN),
        ),
    ),
    User(
        "audit",
        "read-only: replays and follows the event stream (batched direct gets, no consumers)",
        Permissions(
            publish=AUDIT_IMPORTS,
            subscribe=(_inbox("audit"),),
            publish_deny=(f"{PREFIX}.>", "$KV.>", "$JS.ACK.>", f"{API}.CONSUMER.>"),
        ),
        account=AUDIT_ACCOUNT,
    ),
    User("admin", "people operating the system: everything"),
)
SERVICE_USERS = ("watcher", "reconciler", "status")


def user(name: str) -> User:
    for candidate in USERS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no NATS user {name!r}; known: {', '.join(u.name for u in USERS)}")


def _subject_list(key: str, subjects: Iterable[str], indent: str) -> list[str]:
    unique = dict.fromkeys(subjects)  # keeps the order
    return [f"{indent}{key}: [", *(f"{indent}  {json.dumps(s)}" for s in unique), f"{indent}]"]


def _direction(name: str, allow: tuple[str, ...], deny: tuple[str, ...], indent: str) -> list[str]:
    lines = [f"{indent}{name}: {{", *_subject_list("allow", allow, indent + "  ")]
    if deny:
        lines += _subject_list("deny", deny, indent + "  ")
    lines.append(f"{indent}}}")
    return lines


def _user_lines(u: User, indent: str) -> list[str]:
    inner = indent + "  "
    lines = [
        f"{indent}# {u.name}: {u.purpose}",
        f"{indent}{{",
        f"{inner}user: {u.name}",
        f"{inner}password: ${u.password_variable}",
    ]
    if u.permissions is not None:
        p = u.permissions
        lines.append(f"{inner}permissions: {{")
        lines += _direction("publish", p.publish, p.publish_deny, inner + "  ")
        lines += _direction("subscribe", p.subscribe, p.subscribe_deny, inner + "  ")
        lines.append(f"{inner}}}")
    lines.append(f"{indent}}}")
    return lines


def _account_lines(account: str) -> list[str]:
    lines = [f"  {account}: {{"]
    if account == ACCOUNT:
        lines.append("    jetstream: enabled")
    lines.append("    users: [")
    for u in USERS:
        if u.account == account:
            lines += _user_lines(u, "      ")
    lines.append("    ]")
    if account == ACCOUNT:
        # Response type stream: a batched direct get answers with several messages.
        lines.append("    exports: [")
        only = f"accounts: [{AUDIT_ACCOUNT}]"
        lines += [
            f"      {{service: {json.dumps(s)}, response_type: stream, {only}}}"
            for s in AUDIT_IMPORTS
        ]
        lines.append("    ]")
    else:
        lines.append("    imports: [")
        lines += [
            f"      {{service: {{account: {ACCOUNT}, subject: {json.dumps(s)}}}}}"
            for s in AUDIT_IMPORTS
        ]
        lines.append("    ]")
    lines.append("  }")
    return lines


def authorization_block() -> str:
    """The ``accounts`` block of nats.conf for every user, password hashes as env variables."""
    lines = [
        "# Generated from services/admin/nats_auth.py; do not edit.",
        f"# {REGENERATE}",
        "accounts {",
    ]
    for account in (ACCOUNT, AUDIT_ACCOUNT):
        lines += _account_lines(account)
    lines += ["}", ""]
    return "\n".join(lines)


# -- local passwords -------------------------------------------------------------------------


def generate_password() -> str:
    # Letters first, then only hex digits: safe in a URL, a shell and a config value.
    return "mcop" + secrets.token_hex(16)


def password_hash(password: str, *, cost: int = BCRYPT_COST) -> str:
    """The bcrypt hash nats-server compares a client's password with."""
    import bcrypt  # only the server's side needs it

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def ensure_passwords(state_dir: Path) -> dict[str, str]:
    """The local users' passwords: generated into the state directory once, then reused."""
    existing = load_passwords(state_dir)
    if existing is not None and all(u.name in existing for u in USERS):
        return existing
    passwords = {u.name: generate_password() for u in USERS}
    passwords.update(existing or {})
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / PASSWORDS_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(passwords, out, indent=2)
    tmp.replace(path)
    return passwords


def load_passwords(state_dir: Path) -> dict[str, str] | None:
    """The passwords generated for this state directory, or None when it has none."""
    try:
        data = json.loads((state_dir / PASSWORDS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def server_environment(passwords: Mapping[str, str], *, cost: int = BCRYPT_COST) -> dict[str, str]:
    """The variables nats-server resolves the passwords of the accounts block with: each
    user's bcrypt hash, quoted (nats-server parses a variable's value as a config value, and
    an unquoted ``$2b$...`` would read as another variable)."""
    known = {u.name: u for u in USERS}
    return {
        known[name].password_variable: json.dumps(password_hash(password, cost=cost))
        for name, password in passwords.items()
        if name in known
    }


# -- the permission table ----------------------------------------------------------------------


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def allowed(u: User, action: str, subject: str) -> bool:
    """Whether the server lets ``u`` publish (``pub``) or subscribe (``sub``) to ``subject``."""
    if u.permissions is None:
        return True
    p = u.permissions
    if action == "pub":
        allow, deny = p.publish, p.publish_deny
    else:
        allow, deny = p.subscribe, p.subscribe_deny
    return any(subject_matches(a, subject) for a in allow) and not any(
        subject_matches(d, subject) for d in deny
    )


@dataclass(frozen=True)
class Probe:
    """One concrete subject a user publishes or subscribes to, shown as ``item`` in ``row``."""

    row: str
    item: str
    action: str  # "pub" or "sub"
    subject: str


_SHORT = {
    EVENTS_STREAM: "events",
    REQUESTS_STREAM: "requests",
    DEADLETTER_STREAM: "deadletter",
    LEASES_STREAM: "leases",
}
PROBE_NAMESPACE = "nats-auth-probe"


def probes() -> list[Probe]:
    """Every JetStream API verb on every stream and every subject family, as the rows of the
    table of :func:`markdown_table` and the requests tests/integration/test_nats_auth.py
    makes as each user against a real server."""
    out: list[Probe] = []
    key = f"{PROBE_NAMESPACE}.probe"

    def pub(row: str, item: str, subject: str) -> None:
        out.append(Probe(row, item, "pub", subject))

    for verb in ("CREATE", "UPDATE", "DELETE", "PURGE", "INFO", "MSG.GET", "MSG.DELETE"):
        for stream in STREAMS:
            pub(f"`STREAM.{verb}`", _SHORT[stream], f"{API}.STREAM.{verb}.{stream}")
    for row, api in (
        ("`INFO` (account)", f"{API}.INFO"),
        ("`STREAM.NAMES`", f"{API}.STREAM.NAMES"),
        ("`STREAM.LIST`", f"{API}.STREAM.LIST"),
    ):
        pub(row, "yes", api)
    for stream in STREAMS:
        pub("`DIRECT.GET` batched (any subject)", _SHORT[stream], f"{API}.DIRECT.GET.{stream}")
    for item, stream, subject in (
        ("memcached", EVENTS_STREAM, f"{PREFIX}.{EVENTS}.memcached.{key}"),
        ("deployment", EVENTS_STREAM, f"{PREFIX}.{EVENTS}.deployment.{key}"),
        ("pod", EVENTS_STREAM, f"{PREFIX}.{EVENTS}.pod.{key}"),
        ("outcome", EVENTS_STREAM, f"{PREFIX}.{OUTCOMES}.{RECONCILE}.{key}"),
        ("requests.reconcile", REQUESTS_STREAM, f"{PREFIX}.{REQUESTS}.{RECONCILE}.{key}"),
        ("requests.status", REQUESTS_STREAM, f"{PREFIX}.{REQUESTS}.{STATUS}.{key}"),
        ("leases.reconcile", LEASES_STREAM, f"{LEASES_SUBJECT_PREFIX}{RECONCILE}.{key}"),
        ("leases.status", LEASES_STREAM, f"{LEASES_SUBJECT_PREFIX}{STATUS}.{key}"),
    ):
        pub("`DIRECT.GET` of one subject", item, f"{API}.DIRECT.GET.{stream}.{subject}")
    for stream in STREAMS:
        s = _SHORT[stream]
        pub("`CONSUMER.CREATE` ephemeral", s, f"{API}.CONSUMER.CREATE.{stream}")
        pub("`CONSUMER.CREATE` named", s, f"{API}.CONSUMER.CREATE.{stream}.probe")
        pub("`CONSUMER.DURABLE.CREATE`", s, f"{API}.CONSUMER.DURABLE.CREATE.{stream}.probe")
        pub("`CONSUMER.DELETE`", s, f"{API}.CONSUMER.DELETE.{stream}.probe")
        pub("`CONSUMER.INFO` (any consumer)", s, f"{API}.CONSUMER.INFO.{stream}.probe")
        pub("`CONSUMER.MSG.NEXT` (any consumer)", s, f"{API}.CONSUMER.MSG.NEXT.{stream}.probe")
        pub("`$JS.FC` flow control", s, f"$JS.FC.{stream}.probe.1")
    for controller in (RECONCILE, STATUS):
        durable = Controller.of(controller).durable
        own = f"{REQUESTS_STREAM}.{durable}"
        filter_ = f"{PREFIX}.{REQUESTS}.{controller}.>"
        pub("`CONSUMER.CREATE` of a work queue", durable, f"{API}.CONSUMER.CREATE.{own}.{filter_}")
        pub("`CONSUMER.INFO` of a work queue", durable, f"{API}.CONSUMER.INFO.{own}")
        pub("`CONSUMER.MSG.NEXT` of a work queue", durable, f"{API}.CONSUMER.MSG.NEXT.{own}")
        pub("`CONSUMER.DELETE` of a work queue", durable, f"{API}.CONSUMER.DELETE.{own}")
        # An ack of a sequence that no consumer ever delivered: harmless when allowed.
        pub("`$JS.ACK` of a work queue", durable, f"$JS.ACK.{own}.1.999999999.999999999.0.0")
    for item, subject in (
        ("memcached", f"{PREFIX}.{EVENTS}.memcached.{key}"),
        ("deployment", f"{PREFIX}.{EVENTS}.deployment.{key}"),
        ("pod", f"{PREFIX}.{EVENTS}.pod.{key}"),
    ):
        pub("publish `mcop.events`", item, subject)
    pub("publish `mcop.outcomes`", RECONCILE, f"{PREFIX}.{OUTCOMES}.{RECONCILE}.{key}")
    for controller in (RECONCILE, STATUS):
        pub("publish `mcop.requests`", controller, f"{PREFIX}.{REQUESTS}.{controller}.{key}")
    for controller in (RECONCILE, STATUS, "watcher"):
        pub("publish `mcop.deadletter`", controller, f"{PREFIX}.{DEADLETTER}.{controller}.{key}")
    for controller in (RECONCILE, STATUS):
        pub("publish `$KV.mcop-leases`", controller, f"{LEASES_SUBJECT_PREFIX}{controller}.{key}")
    sub_subjects = (
        ("`_INBOX.` (shared)", "yes", "_INBOX.probe"),
        *(("`_INBOX_<user>.`", u.name, f"{inbox_prefix(u.name)}.probe") for u in USERS),
        ("`mcop.>`", "events", f"{PREFIX}.{EVENTS}.memcached.{key}"),
        ("`mcop.>`", "requests", f"{PREFIX}.{REQUESTS}.{RECONCILE}.{key}"),
        ("`mcop.>`", "deadletter", f"{PREFIX}.{DEADLETTER}.{RECONCILE}.{key}"),
        ("`$KV.mcop-leases.>`", "yes", f"{LEASES_SUBJECT_PREFIX}{RECONCILE}.{key}"),
    )
    for row, item, subject in sub_subjects:
        out.append(Probe(f"subscribe {row}", item, "sub", subject))
    return out


def table() -> dict[str, dict[str, list[str]]]:
    """row -> user -> the items of that row the user is allowed."""
    rows: dict[str, dict[str, list[str]]] = {}
    for probe in probes():
        cells = rows.setdefault(probe.row, {u.name: [] for u in USERS})
        for u in USERS:
            if allowed(u, probe.action, probe.subject):
                cells[u.name].append(probe.item)
    return rows


def markdown_table() -> str:
    """The permission table, one row per JetStream API verb or subject family."""
    items: dict[str, list[str]] = {}
    for probe in probes():
        items.setdefault(probe.row, []).append(probe.item)
    names = [u.name for u in USERS]
    lines = [
        "| request | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for row, cells in table().items():
        shown = []
        for name in names:
            got = cells[name]
            if not got:
                shown.append("—")
            elif got == items[row]:
                shown.append("yes" if items[row] == ["yes"] else "all")
            else:
                shown.append(", ".join(got))
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    accounts = ", ".join(f"{u.name}: {u.account}" for u in USERS)
    lines += [
        "",
        f"Accounts: {accounts}. Streams: "
        + ", ".join(f"{short} = {stream}" for stream, short in _SHORT.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m memcached_operator.admin.nats_auth",
        description="print the accounts block of nats.conf (default) or the permission table",
    )
    parser.add_argument("--markdown", action="store_true", help="the permission table")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown_table() if args.markdown else authorization_block())
    return 0


if __name__ == "__main__":
    sys.exit(main())
