"""The NATS permission table: every JetStream API verb on every stream and every subject
family, tried as each user of services/admin/nats_auth.py. :func:`markdown_table` is the table
in the README (``python -m memcached_operator.admin.nats_auth --markdown``);
tests/integration/test_nats_auth.py makes each probe against a real server and compares.
"""

from __future__ import annotations

from dataclasses import dataclass

from memcached_operator.admin.nats_auth import API, STREAMS, USERS, allowed
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
from memcached_operator.shared.workqueue.controller import Controller


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
        ("pdb", EVENTS_STREAM, f"{PREFIX}.{EVENTS}.pdb.{key}"),
        ("service", EVENTS_STREAM, f"{PREFIX}.{EVENTS}.service.{key}"),
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
