"""The NATS accounts and users of memcached-operator and their permissions, written down once.

One user per service (watcher, reconciler, status), a read-only ``audit`` user and an
unrestricted ``admin`` user for people operating the system. ``nats_conf.py`` renders them
as the ``accounts`` block of nats.conf; both the Kubernetes manifests
(``deploy/base/nats/auth.conf``, checked by a test) and the local nats-server use exactly this
text. Passwords are never in it: each is the environment variable ``$NATS_<USER>_PASSWORD``,
which nats-server resolves when it reads its config, and whose value is the password's bcrypt
hash (quoted, see :func:`server_environment`): the server can check a password but holds none.
The services hold their own plain password (a Secret locally generated into the state
directory, in Kubernetes by ``memcached-operator nats-credentials``). ``nats_table.py`` probes
every user against every JetStream verb and subject family: the README's permission table and
the requests tests/integration/test_nats_auth.py makes against a real server.

Each allow-list is what the service's code does on NATS and nothing more: the JetStream API
requests it makes (per stream, and per consumer where it has its own), the acks, lease writes
and direct gets of the keyed work queue, and the subjects it publishes. No service may create,
update, purge or delete a stream: the admin creates them (``memcached-operator streams
ensure``); a service may only read their info. Each user receives replies on its own inbox
prefix (``_INBOX_<user>.``, see shared/bus/connection.py), so no user can read another's replies.

The audit user lives in an account of its own, which sees the operator's account only through
imported services: the batched direct gets of the event, dead-letter and requests streams and
the lease bucket, and nothing else. Within one
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
import sys
from dataclasses import dataclass

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

# The operator's account (its streams, the services, the admin) and the audit user's own.
ACCOUNT = "MCOP"
AUDIT_ACCOUNT = "MCOP_AUDIT"

API = "$JS.API"
STREAMS = (EVENTS_STREAM, REQUESTS_STREAM, DEADLETTER_STREAM, LEASES_STREAM)
# The work-queue controllers (consumer mcop-<controller> on the requests stream): RECONCILE and
# STATUS, the names of shared/workqueue/controller.py's values.
# What the audit account imports from the operator's: batched direct gets of the event stream,
# and for `kubectl memcached explain` and `dlq list|show` (services/audit/) those of the
# dead-letter stream, the requests stream (is a request waiting?) and the lease bucket (does a
# worker hold the object?). Reads only: each answers with stored messages, nothing else.
AUDIT_IMPORTS = (
    f"{API}.DIRECT.GET.{EVENTS_STREAM}",
    f"{API}.DIRECT.GET.{DEADLETTER_STREAM}",
    f"{API}.DIRECT.GET.{REQUESTS_STREAM}",
    f"{API}.DIRECT.GET.{LEASES_STREAM}",
)


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
    consumer, acks, its leases (a controller that takes them: ``exclusive="fleet"``),
    newest-request direct gets (and, when a direct get shows an
    older request or none, the same read from the stream's leader: a message get, whose body
    names the subject, so NATS cannot scope it to the controller's requests; they are empty
    bodies with headers), requeued copies, dead letters."""
    known = Controller.of(controller)
    durable = known.durable
    requests = _family(REQUESTS, controller)
    leases = f"{LEASES_SUBJECT_PREFIX}{controller}.>"
    lease_grants = [f"{API}.DIRECT.GET.{LEASES_STREAM}.{leases}", leases] if known.leased else []
    return [
        # The consumer's create request carries its filter subject after its name.
        f"{API}.CONSUMER.CREATE.{REQUESTS_STREAM}.{durable}.>",
        f"{API}.CONSUMER.INFO.{REQUESTS_STREAM}.{durable}",
        f"{API}.CONSUMER.MSG.NEXT.{REQUESTS_STREAM}.{durable}",
        f"$JS.ACK.{REQUESTS_STREAM}.{durable}.>",
        f"{API}.DIRECT.GET.{REQUESTS_STREAM}.{requests}",
        f"{API}.STREAM.MSG.GET.{REQUESTS_STREAM}",
        *lease_grants,
        requests,
        _family(DEADLETTER, controller),
    ]


# The kinds of object each service reads from the event stream (shared/events/state.py): the
# reconciler a Memcached and every object it owns (services/reconciler/reconcile.py, OWNED), the
# status service a Memcached and its Deployment (services/status/service.py; pods through the
# pod index, granted beside it). tests/unit/test_nats_permissions.py checks both against the
# services' code.
RECONCILER_READS = ("memcached", "deployment", "pdb", "service")
STATUS_READS = ("memcached", "deployment")


def _observed_state(kinds: tuple[str, ...]) -> list[str]:
    """Direct gets of the newest event of each object of ``kinds`` (shared/events/state.py):
    the reconciler and the status service read objects from the stream, not the API server.
    They read several subjects in one batched direct get (shared/bus/directget.py), whose subjects
    are in the request's body: NATS cannot scope that permission by subject, so it grants
    reads of the whole event stream (the operator's own audit log). The per-subject grants,
    exactly the kinds the service reads, are what it falls back to on servers without batched
    gets (or when its batch goes unanswered)."""
    return [
        f"{API}.DIRECT.GET.{EVENTS_STREAM}",
        *(f"{API}.DIRECT.GET.{EVENTS_STREAM}.{_family(EVENTS, kind)}" for kind in kinds),
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
                # publisher.py: which of a failed batch's events of an object the stream holds.
                f"{API}.DIRECT.GET.{EVENTS_STREAM}.{_family(EVENTS)}",
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
                *_observed_state(RECONCILER_READS),
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
                *_observed_state(STATUS_READS),
                # The pod index (services/status/pod_index.py): an ordered consumer of the pod
                # events, and the newest one per namespace from the stream's leader (a message
                # get, not a direct get: its body names the subject, so NATS cannot scope it; it
                # reads no more than the batched direct gets above already may).
                *_ordered_consumer(EVENTS_STREAM),
                f"{API}.STREAM.MSG.GET.{EVENTS_STREAM}",
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
        "read-only: replays and follows the event stream, reads dead letters, pending requests "
        "and leases (batched direct gets, no consumers)",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m memcached_operator.admin.nats_auth",
        description="print the accounts block of nats.conf (default) or the permission table",
    )
    parser.add_argument("--markdown", action="store_true", help="the permission table")
    args = parser.parse_args(argv)
    # The renderers import this model: imported when the command runs.
    from memcached_operator.admin.nats_conf import authorization_block
    from memcached_operator.admin.nats_table import markdown_table

    sys.stdout.write(markdown_table() if args.markdown else authorization_block())
    return 0


if __name__ == "__main__":
    sys.exit(main())
