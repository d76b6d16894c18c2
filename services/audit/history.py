"""`kubectl memcached history NAME`: a Memcached's revisions as the event stream recorded them.

A revision is one generation of one CR (one uid): when it was first seen, what changed in its
spec against the revision before (a compact diff of dotted paths), who changed it (the field
manager the watcher recorded), the reconcile outcomes for that generation and the status
condition transitions that followed, each with its trace id. ``--revision N`` prints the whole
spec at revision N, as ``kubectl rollout history --revision`` does.

Only this CR's subjects are read: ``mcop.events.memcached.<ns>.<name>`` and
``mcop.outcomes.reconcile.<ns>.<name>``, by batched direct gets with those exact subjects as
filters, so the server looks the messages up in its per-subject index and the cost grows with
this CR's history, not with the stream. Records that do not decode are reported on stderr and
left out, never guessed at.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from memcached_operator.audit import render
from memcached_operator.audit.command import Stored, read_events
from memcached_operator.shared.api.contract import FIELD_MANAGER
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.events.outcomes import Outcome

if TYPE_CHECKING:
    from nats.aio.client import Client

    from memcached_operator.audit.kubectl import Session

RECONCILE = "reconcile"
# A diff longer than this many paths is summarised in the table (JSON keeps every path).
_SHOWN_CHANGES = 4

COLUMNS = (
    render.Column("REVISION", "revision"),
    render.Column("GENERATION", "generation", wide=True),
    render.Column("TIME", "time"),
    render.Column("CHANGE", "change"),
    render.Column("BY", "fieldManager"),
    render.Column("OUTCOME", "outcome"),
    render.Column("STATUS", "status"),
    render.Column("UID", "uid", wide=True),
    render.Column("MESSAGE", "message", wide=True),
    render.Column("TRACE ID", "traceId"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the Memcached")
    parser.add_argument(
        "--revision", type=int, default=None, help="print the full spec at this revision"
    )
    parser.add_argument(
        "--controller", default=RECONCILE, help="whose outcomes to show (default: reconcile)"
    )


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted paths to their leaves (lists are leaves; an empty mapping
    says nothing a diff should show)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in sorted(value, key=str):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value} if prefix else {}


def spec_diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[dict[str, Any]]:
    """What changed between two specs, one entry per path: ``from`` None when added, ``to``
    None when removed."""
    old, new = flatten(before or {}), flatten(after)
    return [
        {"path": path, "from": old.get(path), "to": new.get(path)}
        for path in sorted(old.keys() | new.keys())
        if old.get(path) != new.get(path)
    ]


def describe(changes: Sequence[dict[str, Any]], *, created: bool) -> str:
    """The diff in a few words: ``size: 1 -> 3, image: a -> b``."""
    if created:
        shown = ", ".join(f"{c['path']}={c['to']}" for c in changes[:_SHOWN_CHANGES])
        return f"created ({shown})" if shown else "created"
    if not changes:
        return "no spec change"
    parts = []
    for c in changes[:_SHOWN_CHANGES]:
        if c["from"] is None:
            parts.append(f"+{c['path']}={c['to']}")
        elif c["to"] is None:
            parts.append(f"-{c['path']}")
        else:
            parts.append(f"{c['path']}: {c['from']} -> {c['to']}")
    more = len(changes) - _SHOWN_CHANGES
    return ", ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status = obj.get("status")
    items = status.get("conditions") if isinstance(status, dict) else None
    out: dict[str, dict[str, Any]] = {}
    for c in items if isinstance(items, list) else []:
        if isinstance(c, dict) and isinstance(c.get("type"), str):
            out[c["type"]] = c
    return out


def _author(manager: str, *, created: bool) -> str:
    """Who changed the spec: the field manager the watcher recorded (the newest managedFields
    entry). The operator never writes a CR's spec, so when that is one of its own managers (a
    status write timed later than a write through the scale subresource, whose entries carry no
    time), the author is not on record: ''."""
    if not created and manager.startswith(FIELD_MANAGER):
        return ""
    return manager


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def build(
    memcached: Sequence[Stored], outcomes: Sequence[Stored], *, err: TextIO = sys.stderr
) -> list[dict[str, Any]]:
    """The revisions recorded in a CR's events and outcomes (each in stream order)."""
    revisions: list[dict[str, Any]] = []
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    spec_of: dict[str, dict[str, Any]] = {}  # uid -> the spec of its newest revision
    seen: dict[str, dict[str, dict[str, Any]]] = {}  # uid -> conditions last seen
    for msg in memcached:
        try:
            event = events.decode(msg.headers, msg.data)
        except ValueError as error:
            err.write(f"history: left out malformed event {msg.sequence}: {error}\n")
            continue
        meta = event.data.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        uid, generation = str(meta.get("uid") or ""), _int(meta.get("generation"))
        spec = event.data.get("spec")
        spec = spec if isinstance(spec, dict) else {}
        current = by_key.get((uid, generation))
        if current is None:
            created = uid not in spec_of
            changes = spec_diff(spec_of.get(uid), spec)
            current = {
                "revision": len(revisions) + 1,
                "generation": generation,
                "uid": uid,
                "time": event.time,
                "fieldManager": _author(event.field_manager, created=created),
                "change": describe(changes, created=created),
                "changes": changes,
                "traceId": event.trace_id,
                "spec": spec,
                "outcomes": [],
                "transitions": [],
            }
            revisions.append(current)
            by_key[(uid, generation)] = current
            spec_of[uid] = spec
        if event.change == "deleted":
            current["transitions"].append({"time": event.time, "type": "Deleted"})
            continue
        before = seen.get(uid, {})
        after = _conditions(event.data)
        for ctype, c in after.items():
            old = before.get(ctype)
            if old is None or (old.get("status"), old.get("reason")) != (
                c.get("status"),
                c.get("reason"),
            ):
                current["transitions"].append(
                    {
                        "time": str(c.get("lastTransitionTime") or event.time),
                        "type": ctype,
                        "status": str(c.get("status") or ""),
                        "reason": str(c.get("reason") or ""),
                        "message": str(c.get("message") or ""),
                        "traceId": event.trace_id,
                    }
                )
        seen[uid] = after
    for msg in outcomes:
        try:
            outcome = Outcome.from_json(msg.data)
        except ValueError as error:
            err.write(f"history: left out malformed outcome {msg.sequence}: {error}\n")
            continue
        target = by_key.get((outcome.uid, outcome.generation))
        if target is None:  # its generation's events are older than the window read
            older = [r for r in revisions if r["uid"] == outcome.uid]
            older = [r for r in older if r["generation"] <= outcome.generation] or older
            if not older:
                continue
            target = older[-1]
        target["outcomes"].append(
            {
                "time": outcome.time.isoformat().replace("+00:00", "Z"),
                "result": outcome.result,
                "reason": outcome.reason,
                "message": outcome.message,
                "generation": outcome.generation,
                "traceId": outcome.trace_id,
            }
        )
    for r in revisions:
        newest = r["outcomes"][-1] if r["outcomes"] else None
        r["outcome"] = (
            f"{newest['result']}" + (f" ({newest['reason']})" if newest["reason"] else "")
            if newest
            else ""
        )
        r["message"] = newest["message"] if newest else ""
        # Each condition as this revision left it (every transition is in the JSON).
        final = {t["type"]: t.get("status", "") for t in r["transitions"]}
        r["status"] = (
            "deleted"
            if "Deleted" in final
            else ", ".join(f"{ctype}={status}" for ctype, status in final.items())
        )
        if not r["traceId"] and newest:
            r["traceId"] = newest["traceId"]
    return revisions


async def read(
    nc: Client,
    key: ObjectKey,
    *,
    controller: str = RECONCILE,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> tuple[list[Stored], list[Stored]]:
    """This CR's memcached events and outcomes, each read with its own exact subject."""

    async def one(subject: str) -> list[Stored]:
        found = [m async for m in read_events(nc, subject, since=since)]
        if until is None:
            return found
        return [m for m in found if render.within(_stamp(m), None, until)]

    memcached, outcomes = await asyncio.gather(
        one(subjects.subject(subjects.EVENTS, "memcached", key)),
        one(subjects.subject(subjects.OUTCOMES, controller, key)),
    )
    return memcached, outcomes


def _stamp(msg: Stored) -> str:
    """When the stream stored ``msg`` (the Nats-Time-Stamp a direct get adds)."""
    return msg.headers.get("Nats-Time-Stamp", "")


async def run(s: Session, out: TextIO = sys.stdout) -> int:
    args = s.args
    if s.namespace is None:
        raise ValueError("history needs a namespace")
    key = subjects.object_key(s.namespace, args.name)
    memcached, outcomes = await read(
        s.nc, key, controller=args.controller, since=args.since, until=args.until
    )
    revisions = build(memcached, outcomes)
    doc: dict[str, Any] = {
        "kind": "MemcachedHistory",
        "namespace": key.namespace,
        "name": key.name,
        "revisions": revisions,
    }
    if args.revision is not None:
        chosen = [r for r in revisions if r["revision"] == args.revision]
        if not chosen:
            sys.stderr.write(
                f"error: {key} has no revision {args.revision} in the recorded history "
                f"(revisions 1..{len(revisions)})\n"
            )
            return 1
        if args.output in ("json", "yaml"):
            render.document(chosen[0], args.output, out)
        else:
            r = chosen[0]
            out.write(
                f"memcached {key} revision {r['revision']} (generation {r['generation']}, "
                f"{r['time']}, by {r['fieldManager'] or '-'}):\n"
            )
            render.document({"spec": r["spec"]}, "yaml", out)
        return 0
    if args.output in ("json", "yaml"):
        render.document(doc, args.output, out)
    elif not revisions:
        out.write(f"no recorded history for memcached {key}\n")
    else:
        render.table(revisions, COLUMNS, wide=args.output == "wide", out=out)
    return 0
