"""`memcached-operator audit`: replay or follow the event stream, filtered, as a table or data.

Batched direct gets read the events stream from where the filters say (the start, a duration
ago, or only new events), with the NATS subject filter built from --namespace/--name/--kind so
the server does the filtering. Direct gets are the only JetStream requests the audit user may
make (services/admin/nats_auth.py: its account imports nothing else), so the audit reads without
creating a consumer; ``kubectl memcached`` reads the dead-letter stream the same way
(:func:`read_events` with ``stream``). Without --follow it stops at the end of the history it
found and exits 0; with it, it asks again for newer messages every half second.

Who and what a record is about comes from the subject, the part the NATS permissions scope
(only the watcher may publish ``mcop.events.``, only the reconciler ``mcop.outcomes.``); the
headers and the body are the publisher's words. A record whose headers or body name another
namespace, name or kind than its subject is shown with what they claimed (column CHECK, JSON
field ``disagrees``), never silently trusted or dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TextIO

import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg

from memcached_operator.shared.bus import connection as natsconn
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.runtime import settings
from memcached_operator.shared.runtime.settings import NatsSettings

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """'90s', '5m', '2h', '7d' → timedelta; raises argparse.ArgumentTypeError otherwise."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 5m, 2h, 1d)")
    return dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_flags(parser, NatsSettings)
    parser.add_argument("--namespace", "-n", help="only this namespace")
    parser.add_argument("--name", help="only objects (or owners' outcomes) with this name")
    parser.add_argument(
        "--kind",
        choices=["memcached", "deployment", "pod", "pdb", "service", "reconcile", "deadletter"],
        help="only this kind",
    )
    parser.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        help="only these event types; a full ce-type or its suffix, e.g. memcached.modified "
        "or deleted (repeatable)",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--since", type=parse_duration, help="events newer than this, e.g. 10m")
    when.add_argument("--from-start", action="store_true", help="the whole history")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    parser.add_argument(
        "-o", "--output", choices=["table", "wide", "json", "yaml"], default="table"
    )


def filter_subject(args: argparse.Namespace) -> str:
    family = subjects.OUTCOMES if args.kind == "reconcile" else subjects.EVENTS
    parts = [
        subjects.PREFIX,
        family if args.kind else "*",
        args.kind or "*",
        subjects.encode_token(args.namespace) if args.namespace is not None else "*",
        subjects.encode_token(args.name) if args.name else "*",
    ]
    if not args.kind:
        # events and outcomes share the stream; '*' in the family token covers both.
        parts[1] = "*"
    return ".".join(parts)


def matches_type(event_type: str, wanted: list[str]) -> bool:
    if not wanted:
        return True
    return any(event_type == w or event_type.endswith("." + w) for w in wanted)


def _claims(headers: dict[str, str], body: object) -> dict[str, str]:
    """What a message says about itself besides its subject: the ``ce-`` headers' kind,
    namespace and name, and the namespace/name in its body (an object's metadata, an
    outcome's key)."""
    claims = {
        f"ce-{field}": events.decode_value(headers[f"ce-{field}"])
        for field in ("kind", "namespace", "name")
        if f"ce-{field}" in headers
    }
    if isinstance(body, dict):
        meta = body.get("metadata")
        if isinstance(meta, dict):
            for field in ("namespace", "name"):
                if field in meta:
                    claims[f"metadata.{field}"] = str(meta[field])
        elif isinstance(body.get("key"), str):
            namespace, _, name = str(body["key"]).rpartition("/")
            claims["key.namespace"], claims["key.name"] = namespace, name
    return claims


def disagreements(subject: str, headers: dict[str, str], body: object) -> list[str]:
    """Each claim of the message that contradicts its subject, as ``claim=value``."""
    parsed = subjects.parse(subject)
    truth = {
        "kind": parsed.kind,
        "namespace": parsed.key.namespace,
        "name": parsed.key.name,
    }
    out = []
    for claim, value in _claims(headers, body).items():
        field = claim.rpartition(".")[2].removeprefix("ce-")
        if value != truth[field]:
            out.append(f"{claim}={value}")
    return out


def record(headers: dict[str, str], data: bytes, subject: str) -> dict[str, Any]:
    """The audit record of one message; raises ValueError when it is not a valid event."""
    event = events.decode(headers, data)
    parsed = subjects.parse(subject)
    return {
        "time": event.time,
        "type": event.type,
        "namespace": parsed.key.namespace,
        "name": parsed.key.name,
        "resourceVersion": event.resource_version,
        "fieldManager": event.field_manager,
        "traceId": event.trace_id,
        "id": event.id,
        "disagrees": disagreements(subject, headers, event.data),
    }


_COLUMNS = (
    ("TIME", "time", 27),
    ("TYPE", "type", 40),
    ("NAMESPACE/NAME", "key", 36),
    ("RV", "resourceVersion", 8),
    ("FIELD MANAGER", "fieldManager", 28),
    ("TRACE ID", "traceId", 32),
    ("CHECK", "check", 0),
)


def _print(rec: dict[str, Any], output: str, out: TextIO) -> None:
    if output == "json":
        out.write(json.dumps(rec) + "\n")
        return
    if output == "yaml":  # a stream of YAML documents, one per record
        out.write("---\n" + yaml.safe_dump(rec, sort_keys=False))
        return
    check = "DISAGREES: " + " ".join(rec["disagrees"]) if rec["disagrees"] else ""
    key = f"{rec['namespace']}/{rec['name']}" if rec["namespace"] else rec["name"]
    row = dict(rec, key=key, check=check)
    out.write("  ".join(str(row[k] or "-").ljust(w) for _, k, w in _COLUMNS).rstrip() + "\n")


@dataclass(frozen=True)
class Stored:
    """One message of the stream as a direct get returns it."""

    subject: str
    sequence: int
    headers: dict[str, str]
    data: bytes


BATCH = 256
FOLLOW_INTERVAL = 0.5
_REPLY_TIMEOUT = 5.0


async def _batch(
    nc: Client, request: dict[str, Any], stream: str = EVENTS_STREAM
) -> tuple[list[Stored], int]:
    """One batched direct get on ``stream``: the messages, and how many more match after the
    last one."""
    inbox = nc.new_inbox()
    replies: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        replies.put_nowait(msg)

    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        found: list[Stored] = []
        pending = 0
        while True:
            try:
                msg = await asyncio.wait_for(replies.get(), _REPLY_TIMEOUT)
            except TimeoutError:
                raise RuntimeError(
                    f"no answer to a direct get of {stream} within {_REPLY_TIMEOUT:.0f}s "
                    "(is the stream there, and may this NATS user read it?)"
                ) from None
            headers = dict(msg.headers or {})
            status = headers.get("Status")
            if status in ("204", "404"):  # end of the batch; nothing (more) matches
                return found, pending if status == "204" else 0
            if status:
                raise RuntimeError(f"direct get refused: {status} {headers.get('Description')}")
            pending = int(headers.get("Nats-Num-Pending") or 0)
            found.append(
                Stored(
                    headers.get("Nats-Subject", ""),
                    int(headers.get("Nats-Sequence") or 0),
                    headers,
                    msg.data,
                )
            )
    finally:
        await sub.unsubscribe()


async def read_events(
    nc: Client,
    filter_subject: str,
    *,
    since: dt.datetime | None = None,
    follow: bool = False,
    stream: str = EVENTS_STREAM,
) -> AsyncIterator[Stored]:
    """The messages of ``stream`` (the events stream unless told) matching ``filter_subject``
    in order, from ``since`` or the start; with ``follow``, then the new ones as they arrive."""
    start: dict[str, Any] = {"seq": 1}
    if since is not None:
        start = {"start_time": since.isoformat().replace("+00:00", "Z")}
    while True:
        request = {**start, "next_by_subj": filter_subject, "batch": BATCH}
        found, pending = await _batch(nc, request, stream)
        for stored in found:
            yield stored
        if found:
            start = {"seq": found[-1].sequence + 1}
        if pending:
            continue
        if not follow:
            return
        await asyncio.sleep(FOLLOW_INTERVAL)


def _after(stamp: str, until: dt.datetime) -> bool:
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) > until
    except ValueError:
        return False


async def audit(args: argparse.Namespace, nats: NatsSettings, out: TextIO = sys.stdout) -> int:
    nc = await natsconn.connect("audit", nats.nats_url)
    try:
        since = None
        if args.since is not None:
            since = dt.datetime.now(dt.UTC) - args.since
        elif args.follow and not args.from_start:
            since = dt.datetime.now(dt.UTC)  # only new events
        if args.output in ("table", "wide"):
            out.write("  ".join(h.ljust(w) for h, _, w in _COLUMNS).rstrip() + "\n")
        async for msg in read_events(nc, filter_subject(args), since=since, follow=args.follow):
            try:
                rec = record(msg.headers, msg.data, msg.subject)
            except ValueError as err:
                # Reported, never silently dropped: the stream is an audit log.
                where = msg.subject
                with contextlib.suppress(ValueError):
                    where = str(subjects.parse(msg.subject).key)
                sys.stderr.write(f"audit: malformed message {msg.sequence} for {where}: {err}\n")
                continue
            until: dt.datetime | None = getattr(args, "until", None)
            if until is not None and _after(rec["time"], until):
                if args.follow:
                    continue
                break  # stream order is time order
            if matches_type(rec["type"], args.types):
                _print(rec, args.output, out)
                out.flush()
        return 0
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> int:
    nats = settings.from_args(NatsSettings, args)
    try:
        return asyncio.run(audit(args, nats))
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    except RuntimeError as err:
        sys.stderr.write(f"audit: {err}\n")
        return 1
