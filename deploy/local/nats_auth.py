"""The NATS users of memcached-operator and their subject permissions, written down once.

One user per service (watcher, reconciler, status), a read-only ``audit`` user and an
unrestricted ``admin`` user for people operating the system. :func:`authorization_block`
renders them as the ``authorization`` block of nats.conf; both the Kubernetes manifests
(``deploy/base/nats/auth.conf``, checked by a test) and the local nats-server use exactly this
text. Passwords are never in it: each is the environment variable ``$NATS_<USER>_PASSWORD``,
which nats-server resolves when it reads its config (from a Secret in Kubernetes, from the
passwords generated into the state directory locally).

Each allow-list is what the service's code does on NATS and nothing more: the JetStream API
requests it makes (per stream, and per consumer where it has its own), the acks, lease writes
and direct gets of the keyed work queue, and the subjects it publishes. A service may create
or update the four streams because every process ensures them at start-up. Denies repeat the
rules that matter most, so that a later widening of an allow-list cannot break them.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.streams import (
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    LEASES_STREAM,
    LEASES_SUBJECT_PREFIX,
    REQUESTS_STREAM,
)
from shared.subjects import DEADLETTER, EVENTS, OUTCOMES, PREFIX, REQUESTS

AUTH_CONF_PATH = "deploy/base/nats/auth.conf"
REGENERATE = f"python -m deploy.local.nats_auth > {AUTH_CONF_PATH}"
PASSWORDS_FILE = "nats-passwords.json"

API = "$JS.API"
INBOX = "_INBOX.>"
STREAMS = (EVENTS_STREAM, REQUESTS_STREAM, DEADLETTER_STREAM, LEASES_STREAM)
# The work-queue controllers (consumer mcop-<controller> on the requests stream).
RECONCILE = "reconcile"
STATUS = "status"


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
    permissions: Permissions | None = None  # None: everything

    @property
    def password_variable(self) -> str:
        """The environment variable nats-server reads this user's password from."""
        return f"NATS_{self.name.upper()}_PASSWORD"


def _family(family: str, kind: str = "*") -> str:
    return f"{PREFIX}.{family}.>" if kind == "*" else f"{PREFIX}.{family}.{kind}.>"


def _ensure_streams() -> list[str]:
    """Every process creates the streams, or brings them to its configuration, at start-up."""
    return [f"{API}.STREAM.{op}.{s}" for s in STREAMS for op in ("CREATE", "UPDATE", "INFO")]


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
    """One controller's share of the keyed work queue (shared/workqueue.py): its durable pull
    consumer, acks, its leases, newest-request direct gets, requeued copies, dead letters."""
    durable = f"mcop-{controller}"
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
    """Direct gets of the newest Memcached and Deployment events (shared/state.py): the
    reconciler and the status service read objects from the stream, not the API server.
    They read several subjects in one batched direct get (shared/directget.py), whose subjects
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
        "publishes watched changes and reconcile/status requests; replays events at start-up",
        Permissions(
            publish=(
                _family(EVENTS),
                _family(REQUESTS),
                *_ensure_streams(),
                *_ordered_consumer(EVENTS_STREAM),
            ),
            subscribe=(INBOX,),
        ),
    ),
    User(
        "reconciler",
        "takes reconcile requests; publishes outcomes and status requests, never events",
        Permissions(
            publish=(
                _family(OUTCOMES, RECONCILE),
                _family(REQUESTS, STATUS),
                *_ensure_streams(),
                *_work_queue(RECONCILE),
                *_observed_state(),
                # Its newest outcome of a CR: an unchanged one is not stored again.
                f"{API}.DIRECT.GET.{EVENTS_STREAM}.{_family(OUTCOMES, RECONCILE)}",
            ),
            subscribe=(INBOX,),
            publish_deny=(_family(EVENTS),),
        ),
    ),
    User(
        "status",
        "takes status requests; reads the newest outcome of a CR and follows the pod events; "
        "publishes no events",
        Permissions(
            publish=(
                *_ensure_streams(),
                *_work_queue(STATUS),
                f"{API}.DIRECT.GET.{EVENTS_STREAM}.{_family(OUTCOMES, RECONCILE)}",
                *_observed_state(),
                # The pod index (services/status/pod_index.py): an ordered consumer of the pod
                # events and a direct get of the newest one per namespace.
                *_ordered_consumer(EVENTS_STREAM),
                f"{API}.DIRECT.GET.{EVENTS_STREAM}.{_family(EVENTS, 'pod')}",
                # Yielding to the reconciler's backlog (shared/workqueue.py): its consumer's
                # info, which holds the count of requests waiting for a worker.
                f"{API}.CONSUMER.INFO.{REQUESTS_STREAM}.mcop-{RECONCILE}",
            ),
            subscribe=(INBOX,),
            publish_deny=(_family(EVENTS), _family(OUTCOMES)),
        ),
    ),
    User(
        "audit",
        "read-only: replays and follows the event and dead-letter streams",
        Permissions(
            publish=(
                *_ordered_consumer(EVENTS_STREAM),
                *_ordered_consumer(DEADLETTER_STREAM),
            ),
            # Only inboxes: a consumer's deliver subject may be any subject the creator
            # chooses, and the server delivers there (into whichever stream captures it) once
            # someone subscribes, so a reader that could subscribe to mcop.* could also write.
            subscribe=(INBOX,),
            publish_deny=(f"{PREFIX}.>", "$KV.>", "$JS.ACK.>"),
        ),
    ),
    User("admin", "people operating the system: everything"),
)
SERVICE_USERS = ("watcher", "reconciler", "status")


def user(name: str) -> User:
    for candidate in USERS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no NATS user {name!r}; known: {', '.join(u.name for u in USERS)}")


def _subject_list(key: str, subjects: Iterable[str]) -> list[str]:
    unique = dict.fromkeys(subjects)  # keeps the order
    return [f"          {key}: [", *(f"            {json.dumps(s)}" for s in unique), "          ]"]


def _direction(name: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> list[str]:
    lines = [f"        {name}: {{", *_subject_list("allow", allow)]
    if deny:
        lines += _subject_list("deny", deny)
    lines.append("        }")
    return lines


def _user_lines(u: User) -> list[str]:
    lines = [
        f"    # {u.name}: {u.purpose}",
        "    {",
        f"      user: {u.name}",
        f"      password: ${u.password_variable}",
    ]
    if u.permissions is not None:
        p = u.permissions
        lines.append("      permissions: {")
        lines += _direction("publish", p.publish, p.publish_deny)
        lines += _direction("subscribe", p.subscribe, p.subscribe_deny)
        lines.append("      }")
    lines.append("    }")
    return lines


def authorization_block() -> str:
    """The ``authorization`` block of nats.conf for every user, passwords as env variables."""
    lines = [
        "# Generated from deploy/local/nats_auth.py; do not edit.",
        f"# {REGENERATE}",
        "authorization {",
        "  users: [",
    ]
    for u in USERS:
        lines += _user_lines(u)
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


# -- local passwords -------------------------------------------------------------------------


def generate_password() -> str:
    # nats-server parses an environment variable's value like a config value, so a password
    # must read as a string there: letters first, then only hex digits.
    return "mcop" + secrets.token_hex(16)


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


def server_environment(passwords: Mapping[str, str]) -> dict[str, str]:
    """The variables nats-server needs to resolve the passwords in the authorization block."""
    known = {u.name: u for u in USERS}
    return {
        known[name].password_variable: password
        for name, password in passwords.items()
        if name in known
    }


if __name__ == "__main__":
    sys.stdout.write(authorization_block())
