"""`kubectl memcached dlq list|show|retry|purge`: the dead-letter stream, and re-driving it.

The work queue publishes a request it gave up on to
``mcop.deadletter.<controller>.<namespace>.<name>`` with the request's own headers and body
and ``Mcop-Deadletter-*`` headers (reason, error, deliveries, the request's subject and
sequence, the worker, the time). ``list`` and ``show`` read them with subject filters, as the
NATS audit user may. ``retry`` publishes the request again with the public ``enqueue`` of the
work queue (its headers and body as they were, the queue's bookkeeping headers dropped, and
``Mcop-Origin`` naming this command, since the re-driver is who asks now); ``purge`` removes
records after a confirmation. Both change the streams, so both need the NATS ``admin``
identity and refuse with a clear message otherwise, and both are recorded on the event stream
as ``io.memcached-operator.deadletter.retried|purged`` events on
``mcop.events.deadletter.<namespace>.<name>``, so ``audit`` shows who re-drove what, when.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from memcached_operator.audit import render
from memcached_operator.audit.command import Stored, _batch, read_events
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import DEADLETTER_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.workqueue import deadletter, queue, types

if TYPE_CHECKING:
    from nats.aio.client import Client

    from memcached_operator.audit.kubectl import Session

ACTIONS = {
    "list": "list dead-lettered requests, per controller and object, with reason and error",
    "show": "one dead letter in full: its headers and the request's body",
    "retry": "re-enqueue a dead-lettered request (NATS admin only; audited on the stream)",
    "purge": "remove dead letters after confirmation (NATS admin only; audited)",
}
ADMIN = "admin"
RETRY_ORIGIN = "kubectl-memcached:dlq-retry"
FIELD_MANAGER = "kubectl-memcached"
DEADLETTER_KIND = "deadletter"
# The queue's own bookkeeping on a request: not part of what the publisher asked for.
_QUEUE_HEADERS = (types.NOT_BEFORE, types.FAILURES, types.TRANSIENT_RETRIES)
_MAX_BODY_SHOWN = 64 * 1024

COLUMNS = (
    render.Column("SEQ", "sequence"),
    render.Column("TIME", "time"),
    render.Column("CONTROLLER", "controller"),
    render.Column("NAMESPACE/NAME", "key"),
    render.Column("REASON", "reason"),
    render.Column("DELIVERIES", "deliveries"),
    render.Column("ORIGIN", "origin", wide=True),
    render.Column("WORKER", "worker", wide=True),
    render.Column("ERROR", "error"),
)


class Refused(Exception):
    """A write verb this identity, or this record, does not allow."""


def add_arguments(action: str, parser: argparse.ArgumentParser) -> None:
    if action in ("list", "purge"):
        parser.add_argument("name", nargs="?", help="only this Memcached")
        parser.add_argument("--controller", default="*", help="only this controller's")
    if action in ("show", "retry"):
        parser.add_argument("sequence", type=int, help="the dead letter's SEQ (from list)")
    if action == "purge":
        parser.add_argument("--seq", type=int, help="only this dead letter")
        parser.add_argument("--yes", "-y", action="store_true", help="do not ask to confirm")


def dead_letter_record(msg: Stored) -> dict[str, Any]:
    """One dead letter as list and explain show it (JSON-ready)."""
    h = msg.headers
    try:
        parsed = subjects.parse(msg.subject)
        controller, key = parsed.kind, parsed.key
    except ValueError:
        controller, key = h.get(deadletter.DL_CONTROLLER, ""), ObjectKey("", "")
    return {
        "sequence": msg.sequence,
        "time": (h.get(deadletter.DL_TIME) or h.get("Nats-Time-Stamp", "")).replace("+00:00", "Z"),
        "controller": controller,
        "namespace": key.namespace,
        "name": key.name,
        "key": str(key) if key.name else "(unparsable request subject)",
        "reason": h.get(deadletter.DL_REASON, ""),
        "error": h.get(deadletter.DL_ERROR, ""),
        "deliveries": h.get(deadletter.DL_DELIVERIES, ""),
        "requestSubject": h.get(deadletter.DL_SUBJECT, ""),
        "requestSequence": h.get(deadletter.DL_SEQUENCE, ""),
        "origin": h.get(types.ORIGIN, ""),
        "worker": h.get(deadletter.DL_WORKER, ""),
    }


def filter_subject(namespace: str | None, name: str | None, controller: str = "*") -> str:
    return ".".join(
        (
            subjects.PREFIX,
            subjects.DEADLETTER,
            controller if controller == "*" else subjects.encode_token(controller),
            "*" if namespace is None else subjects.encode_token(namespace),
            "*" if not name else subjects.encode_token(name),
        )
    )


async def listed(s: Session) -> list[Stored]:
    args = s.args
    found = [
        m
        async for m in read_events(
            s.nc,
            filter_subject(s.namespace, args.name, args.controller),
            since=args.since,
            stream=DEADLETTER_STREAM,
        )
    ]
    if args.until is not None:
        found = [
            m
            for m in found
            if render.within(m.headers.get("Nats-Time-Stamp", ""), None, args.until)
        ]
    return found


async def one(nc: Client, sequence: int, namespace: str | None) -> Stored:
    """The dead letter at ``sequence``, if it is one of ``namespace``'s (None: any)."""
    request = {"seq": sequence, "next_by_subj": filter_subject(namespace, None), "batch": 1}
    found, _ = await _batch(nc, request, DEADLETTER_STREAM)
    if not found or found[0].sequence != sequence:
        where = f" in namespace {namespace}" if namespace is not None else ""
        raise Refused(f"no dead letter #{sequence}{where} (see `kubectl memcached dlq list`)")
    return found[0]


def require_admin(s: Session, action: str) -> None:
    if s.nats_user and s.nats_user != ADMIN:
        raise Refused(
            f"dlq {action} changes the streams and needs the NATS {ADMIN!r} identity; this "
            f"session is NATS user {s.nats_user!r} (set NATS_USER={ADMIN} and its NATS_PASSWORD)"
        )


async def audit_event(
    s: Session, change: str, key: ObjectKey, uid: str, revision: str, details: dict[str, Any]
) -> dict[str, str]:
    """Record a write of this command on the event stream (kind ``deadletter``)."""
    now = dt.datetime.now(dt.UTC)
    obj = {
        "metadata": {
            "namespace": key.namespace,
            "name": key.name,
            "uid": uid,
            "resourceVersion": revision,
            "managedFields": [{"manager": FIELD_MANAGER, "time": now.isoformat()}],
        },
        **details,
    }
    headers, body = events.encode(kind=DEADLETTER_KIND, change=change, obj=obj, when=now)
    subject = subjects.subject(subjects.EVENTS, DEADLETTER_KIND, key)
    await s.nc.jetstream().publish(subject, body, headers=headers)
    return {"subject": subject, "type": headers["ce-type"], "id": headers["ce-id"]}


def _who(s: Session) -> str:
    return s.nats_user or "(unnamed NATS identity)"


async def retry(s: Session, sequence: int) -> dict[str, Any]:
    require_admin(s, "retry")
    msg = await one(s.nc, sequence, s.namespace)
    record = dead_letter_record(msg)
    if not record["name"]:
        raise Refused(f"dead letter #{sequence} has no object key to re-enqueue for")
    if deadletter.DL_BODY_TRUNCATED in msg.headers:
        raise Refused(f"dead letter #{sequence} kept only part of its body; it cannot be re-sent")
    headers = {
        k: v
        for k, v in msg.headers.items()
        if not k.startswith(("Nats-", "Mcop-Deadletter-")) and k not in _QUEUE_HEADERS
    }
    headers[types.ORIGIN] = RETRY_ORIGIN
    key = ObjectKey(record["namespace"], record["name"])
    try:
        new_seq = await queue.enqueue(
            s.nc.jetstream(),
            controller=record["controller"],
            key=key,
            headers=headers,
            body=msg.data,
        )
    except types.PoisonRequest as err:
        raise Refused(f"dead letter #{sequence} cannot be re-sent as it is: {err}") from None
    except Exception as err:
        raise Refused(f"could not re-enqueue (as NATS user {_who(s)}): {err!r}") from None
    event = await audit_event(
        s,
        "retried",
        key,
        f"dlq-{sequence}",
        str(new_seq),
        {
            "deadLetter": {k: record[k] for k in ("sequence", "controller", "reason", "error")},
            "request": {"controller": record["controller"], "sequence": new_seq},
            "by": _who(s),
        },
    )
    return {
        "deadLetter": record,
        "request": {"sequence": new_seq, "origin": RETRY_ORIGIN},
        "event": event,
    }


def confirm(question: str, *, yes: bool, err: TextIO = sys.stderr) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise Refused(f"{question} Not confirmed: re-run with --yes (stdin is not a terminal)")
    err.write(f"{question} [y/N] ")
    err.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def purge(s: Session) -> dict[str, Any]:
    require_admin(s, "purge")
    args = s.args
    js = s.nc.jetstream()
    if args.seq is not None:
        targets = [await one(s.nc, args.seq, s.namespace)]
    else:
        targets = await listed(s)
    where = f"namespace {s.namespace}" if s.namespace is not None else "all namespaces"
    if args.name:
        where = f"{s.namespace}/{args.name}"
    if not targets:
        return {"purged": 0, "scope": where}
    if not confirm(f"Purge {len(targets)} dead letter(s) of {where}?", yes=args.yes):
        raise Refused("not purged")
    try:
        # One by one: exactly the records counted and confirmed (a wider purge by subject
        # would also take any that arrived meanwhile).
        for msg in targets:
            await js.delete_msg(DEADLETTER_STREAM, msg.sequence)
    except Exception as err:
        raise Refused(f"could not purge (as NATS user {_who(s)}): {err!r}") from None
    key = ObjectKey(s.namespace or "", args.name or "")
    sequences = [m.sequence for m in targets]
    event = await audit_event(
        s,
        "purged",
        key,
        f"dlq-purge-{sequences[0]}-{sequences[-1]}",
        str(len(sequences)),
        {"purged": sequences, "scope": where, "by": _who(s)},
    )
    return {"purged": len(sequences), "sequences": sequences, "scope": where, "event": event}


def show_record(msg: Stored) -> dict[str, Any]:
    body = msg.data[:_MAX_BODY_SHOWN]
    text = body.decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = None
    return {
        **dead_letter_record(msg),
        "headers": dict(msg.headers),
        "body": parsed if parsed is not None else text,
        "bodyBytes": len(msg.data),
    }


async def run(s: Session, out: TextIO = sys.stdout) -> int:
    args = s.args
    output = args.output
    try:
        if args.dlq_verb == "list":
            rows = [dead_letter_record(m) for m in await listed(s)]
            if output in ("json", "yaml"):
                render.document({"kind": "DeadLetterList", "items": rows}, output, out)
            elif not rows:
                out.write("no dead letters\n")
            else:
                render.table(rows, COLUMNS, wide=output == "wide", out=out)
            return 0
        if args.dlq_verb == "show":
            doc = show_record(await one(s.nc, args.sequence, s.namespace))
            render.document(doc, "yaml" if output in ("table", "wide", "yaml") else "json", out)
            return 0
        if args.dlq_verb == "retry":
            done = await retry(s, args.sequence)
            if output in ("json", "yaml"):
                render.document(done, output, out)
            else:
                d = done["deadLetter"]
                out.write(
                    f"re-enqueued dead letter #{d['sequence']} ({d['reason']}) as "
                    f"{d['controller']} request #{done['request']['sequence']} for {d['key']}; "
                    f"recorded as {done['event']['type']} {done['event']['id']}\n"
                )
            return 0
        done = await purge(s)
        if output in ("json", "yaml"):
            render.document(done, output, out)
        else:
            out.write(f"purged {done['purged']} dead letter(s) of {done['scope']}\n")
        return 0
    except Refused as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
