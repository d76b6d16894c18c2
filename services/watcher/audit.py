"""`memcached-operator audit`: replay or follow the event stream, filtered, as a table or JSON.

An ordered (ephemeral, flow-controlled) consumer reads the events stream from where the
filters say — the start, a duration ago, or only new events — with the NATS subject filter
built from --namespace/--name/--kind so the server does the filtering. Without --follow it
stops at the end of the history it found when it started and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import re
import sys
from typing import Any, TextIO

from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import events, natsconn, runtime, subjects
from shared.replay import replay
from shared.streams import EVENTS_STREAM

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """'90s', '5m', '2h', '7d' → timedelta; raises argparse.ArgumentTypeError otherwise."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 5m, 2h, 1d)")
    return dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", default=runtime.env("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--namespace", "-n", help="only this namespace")
    parser.add_argument("--name", help="only objects (or owners' outcomes) with this name")
    parser.add_argument(
        "--kind", choices=["memcached", "deployment", "pod", "reconcile"], help="only this kind"
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
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")


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


def record(headers: dict[str, str], data: bytes, subject: str) -> dict[str, Any]:
    """The audit record of one message; raises ValueError when it is not a valid event."""
    event = events.decode(headers, data)
    if not event.name:
        parsed = subjects.parse(subject)
        event = events.Event(
            **{**event.__dict__, "namespace": parsed.key.namespace, "name": parsed.key.name}
        )
    return {
        "time": event.time,
        "type": event.type,
        "namespace": event.namespace,
        "name": event.name,
        "resourceVersion": event.resource_version,
        "fieldManager": event.field_manager,
        "traceId": event.trace_id,
        "id": event.id,
    }


_COLUMNS = (
    ("TIME", "time", 27),
    ("TYPE", "type", 40),
    ("NAMESPACE/NAME", "key", 36),
    ("RV", "resourceVersion", 8),
    ("FIELD MANAGER", "fieldManager", 28),
    ("TRACE ID", "traceId", 32),
)


def _print(rec: dict[str, Any], output: str, out: TextIO) -> None:
    if output == "json":
        out.write(json.dumps(rec) + "\n")
        return
    row = dict(rec, key=f"{rec['namespace']}/{rec['name']}" if rec["namespace"] else rec["name"])
    out.write("  ".join(str(row[k] or "-").ljust(w) for _, k, w in _COLUMNS).rstrip() + "\n")


async def audit(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    nc = await natsconn.connect("audit", args.nats_url)
    try:
        js = nc.jetstream()
        if args.since is not None:
            start = dt.datetime.now(dt.UTC) - args.since
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=start.isoformat().replace("+00:00", "Z"),
            )
        elif args.from_start or not args.follow:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        if args.output == "table":
            out.write("  ".join(h.ljust(w) for h, _, w in _COLUMNS).rstrip() + "\n")
        async for msg in replay(
            js, filter_subject(args), stream=EVENTS_STREAM, config=config, follow=args.follow
        ):
            if msg is None:
                continue
            try:
                rec = record(dict(msg.headers or {}), msg.data, msg.subject)
            except ValueError as err:
                # Reported, never silently dropped: the stream is an audit log.
                where = msg.subject
                with contextlib.suppress(ValueError):
                    where = str(subjects.parse(msg.subject).key)
                sys.stderr.write(
                    f"audit: malformed message {msg.metadata.sequence.stream} for {where}: {err}\n"
                )
                continue
            if matches_type(rec["type"], args.types):
                _print(rec, args.output, out)
                out.flush()
        return 0
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(audit(args))
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
