"""`kubectl memcached explain NAME`: why a Memcached is in its current state, in a few lines.

It puts side by side what a person otherwise gathers from five places: the CR's conditions
(API server), the newest reconcile outcome and its error (the event stream), whether a request
for the CR waits in the work queue and whether a reconciler holds its lease (the requests
stream and the lease bucket; the status service takes none), its dead letters (the
dead-letter stream), the Deployment's rollout and the pods that are not ready with their
reasons (API server), and the trace id of the newest outcome, as a link when
``OTEL_TRACE_URL_TEMPLATE`` is set (``{trace_id}`` is replaced).

Every stream read is by this CR's own subjects: one batched direct get per stream for the
newest messages (outcome, requests, leases) and one subject-filtered read of its dead
letters, all at once, so the time does not grow with the size of the streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from memcached_operator.audit import render
from memcached_operator.audit.command import read_events
from memcached_operator.audit.dlq import dead_letter_record
from memcached_operator.shared.api.contract import RECONCILE, STATUS
from memcached_operator.shared.bus import directget, subjects
from memcached_operator.shared.bus.directget import StoredMsg
from memcached_operator.shared.bus.streams import (
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    LEASES_STREAM,
    LEASES_SUBJECT_PREFIX,
    REQUESTS_STREAM,
)
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.shared.kube.client import DEPLOYMENT, MEMCACHED, POD, KubeClient
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.types import ORIGIN

if TYPE_CHECKING:
    from nats.aio.client import Client

    from memcached_operator.audit.kubectl import Session

CONTROLLERS = (RECONCILE, STATUS)
TRACE_URL_VARIABLE = "OTEL_TRACE_URL_TEMPLATE"
_KV_OPERATION = "KV-Operation"
# How many unready pods and dead letters the explanation lists (JSON: the count is complete).
_SHOWN = 5
# The longest pod reason and message kept (a tenant may write any into a pod's status).
_REASON_MAX, _MESSAGE_MAX = 128, 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the Memcached")


def trace_url(trace_id: str) -> str:
    template = os.environ.get(TRACE_URL_VARIABLE, "")
    if not template or not trace_id:
        return ""
    return template.replace("{trace_id}", trace_id).replace("{traceId}", trace_id)


def _stamp(msg: StoredMsg) -> str:
    return msg.headers.get("Nats-Time-Stamp", "")


async def stream_facts(nc: Client, key: ObjectKey) -> dict[str, Any]:
    """What the streams say about one CR: newest outcome, pending requests, leases, dead
    letters. Read with this CR's subjects only, the four reads at once."""
    js = nc.jetstream()
    outcome_subject = subjects.subject(subjects.OUTCOMES, "reconcile", key)
    requests = {c: subjects.subject(subjects.REQUESTS, c, key) for c in CONTROLLERS}
    # Only a controller kept apart across the fleet takes leases (the status service's writes
    # are conditional on the CR's resourceVersion instead: controller.py).
    leased = [Controller.of(c) for c in CONTROLLERS if Controller.of(c).leased]
    leases = {c.name: LEASES_SUBJECT_PREFIX + c.lease_name(key) for c in leased}
    deadletters = ".".join(
        (
            subjects.PREFIX,
            subjects.DEADLETTER,
            "*",
            subjects.encode_token(key.namespace),
            subjects.encode_token(key.name),
        )
    )

    async def dead() -> list[Any]:
        return [m async for m in read_events(nc, deadletters, stream=DEADLETTER_STREAM)]

    newest, pending, held, letters = await asyncio.gather(
        directget.last_msgs(js, EVENTS_STREAM, [outcome_subject]),
        directget.last_msgs(js, REQUESTS_STREAM, list(requests.values())),
        directget.last_msgs(js, LEASES_STREAM, list(leases.values())),
        dead(),
    )
    facts: dict[str, Any] = {"outcome": None, "requests": {}, "leases": {}}
    if outcome_subject in newest:
        try:
            o = Outcome.from_json(newest[outcome_subject].data)
            facts["outcome"] = {
                "time": o.time.isoformat().replace("+00:00", "Z"),
                "generation": o.generation,
                "result": o.result,
                "reason": o.reason,
                "message": o.message,
                "traceId": o.trace_id,
            }
        except ValueError as err:
            facts["outcome"] = {"result": "unreadable", "message": str(err)}
    for c, subject in requests.items():
        msg = pending.get(subject)
        facts["requests"][c] = (
            {"pending": True, "since": _stamp(msg), "origin": msg.headers.get(ORIGIN, "")}
            if msg is not None
            else {"pending": False}
        )
    for c, subject in leases.items():
        msg = held.get(subject)
        if msg is None or msg.headers.get(_KV_OPERATION) in ("DEL", "PURGE"):
            facts["leases"][c] = {"held": False}
            continue
        try:
            value = json.loads(msg.data or b"{}")
        except ValueError:
            value = {}
        value = value if isinstance(value, dict) else {}
        facts["leases"][c] = {
            "held": True,
            "worker": str(value.get("worker") or ""),
            "since": _stamp(msg),
        }
    facts["deadLetters"] = [dead_letter_record(m) for m in letters]
    return facts


def _not_ready_reason(pod: dict[str, Any]) -> tuple[str, str]:
    reason, message = _unclipped_reason(pod)
    return _clip(reason, _REASON_MAX), _clip(message, _MESSAGE_MAX)


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def _unclipped_reason(pod: dict[str, Any]) -> tuple[str, str]:
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"]), str(waiting.get("message") or "")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for ctype in ("PodScheduled", "Ready", "ContainersReady"):
        c = conditions.get(ctype)
        if c is not None and c.get("status") != "True":
            return str(c.get("reason") or f"{ctype}=False"), str(c.get("message") or "")
    return str(status.get("phase") or "Unknown"), ""


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def rollout(deployment: dict[str, Any] | None) -> dict[str, Any]:
    """The Deployment's rollout in the words of ``kubectl rollout status``."""
    if deployment is None:
        return {"state": "Missing"}
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    replicas = spec.get("replicas")
    want = replicas if isinstance(replicas, int) else 1
    counts = {
        "replicas": want,
        "updated": int(status.get("updatedReplicas") or 0),
        "ready": int(status.get("readyReplicas") or 0),
        "available": int(status.get("availableReplicas") or 0),
    }
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing") or {}
    observed = int(status.get("observedGeneration") or 0)
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        state = "Stalled"
    elif observed >= generation and counts["updated"] == counts["available"] == want:
        state = "Complete"
    else:
        state = "Progressing"
    return {"state": state, **counts, "message": str(progressing.get("message") or "")}


async def cluster_facts(kube: KubeClient, key: ObjectKey) -> dict[str, Any]:
    cr, deployment = await asyncio.gather(
        kube.get(MEMCACHED, key.namespace, key.name),
        kube.get(DEPLOYMENT, key.namespace, key.name),
    )
    unready: list[dict[str, Any]] = []
    labels = (((deployment or {}).get("spec") or {}).get("selector") or {}).get("matchLabels")
    if isinstance(labels, dict) and labels:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        # A page at a time, keeping a line per unready pod: anyone who may create pods in the
        # namespace can label large ones as this CR's.
        pages = kube.list_pages(POD, namespace=key.namespace, label_selector=selector)
        async for page in pages:
            unready.extend(
                {"name": str((p.get("metadata") or {}).get("name")), "reason": r, "message": m}
                for p in page.items
                if not _ready(p) and not (p.get("metadata") or {}).get("deletionTimestamp")
                for r, m in [_not_ready_reason(p)]
            )
    status = (cr or {}).get("status") or {}
    return {
        "exists": cr is not None,
        "generation": int(((cr or {}).get("metadata") or {}).get("generation") or 0),
        "observedGeneration": int(status.get("observedGeneration") or 0),
        "readyReplicas": int(status.get("readyReplicas") or 0),
        "size": ((cr or {}).get("spec") or {}).get("size"),
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")}
            for c in status.get("conditions") or []
            if isinstance(c, dict)
        ],
        "rollout": rollout(deployment),
        "unreadyPods": unready,
    }


def summary(key: ObjectKey, doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The explanation as labelled lines, newest and most telling first."""
    out: list[tuple[str, str]] = []
    if not doc["exists"]:
        out.append(("Memcached", f"{key} does not exist in the cluster"))
    else:
        out.append(
            (
                "Memcached",
                f"{key}: generation {doc['generation']}, observed "
                f"{doc['observedGeneration']}, {doc['readyReplicas']}/{doc['size']} ready",
            )
        )
    for c in doc["conditions"]:
        text = f"{c['status']} {c.get('reason') or ''}".strip()
        out.append((f"{c['type']}", text + (f": {c['message']}" if c.get("message") else "")))
    o = doc["outcome"]
    if o is None:
        out.append(("Last outcome", "none recorded"))
    else:
        text = f"{o['result']}" + (f" ({o['reason']})" if o.get("reason") else "")
        text += f" at {o.get('time', '?')} for generation {o.get('generation', '?')}"
        out.append(("Last outcome", text + (f": {o['message']}" if o.get("message") else "")))
    for c in CONTROLLERS:
        req, lease = doc["requests"][c], doc["leases"].get(c)
        text = (
            f"pending since {req['since']} ({req.get('origin') or 'no origin'})"
            if req["pending"]
            else "none pending"
        )
        if lease is not None:
            text += (
                f"; lease held by {lease['worker'] or '?'} since {lease['since']}"
                if lease["held"]
                else "; no worker holds its lease"
            )
        out.append((f"Queue {c}", text))
    letters = doc["deadLetters"]
    if letters:
        d = letters[-1]
        out.append(
            (
                "Dead letters",
                f"{len(letters)}, newest #{d['sequence']} ({d['controller']}) at {d['time']}: "
                f"{d['reason']}: {d['error']}",
            )
        )
    else:
        out.append(("Dead letters", "none"))
    r = doc["rollout"]
    if r["state"] == "Missing":
        out.append(("Rollout", "no Deployment"))
    else:
        out.append(
            (
                "Rollout",
                f"{r['state']}: {r['updated']}/{r['replicas']} updated, "
                f"{r['ready']}/{r['replicas']} ready, {r['available']}/{r['replicas']} available",
            )
        )
    for p in doc["unreadyPods"][:_SHOWN]:
        out.append(("Not ready", f"pod {p['name']}: {p['reason']}" + _colon(p["message"])))
    if len(doc["unreadyPods"]) > _SHOWN:
        out.append(("Not ready", f"... and {len(doc['unreadyPods']) - _SHOWN} more pods"))
    if doc["traceId"]:
        out.append(("Trace", " ".join(filter(None, (doc["traceId"], doc["traceUrl"])))))
    return out


def _colon(text: str) -> str:
    return f": {text}" if text else ""


async def explain(nc: Client, kube: KubeClient, key: ObjectKey) -> dict[str, Any]:
    streams, cluster = await asyncio.gather(stream_facts(nc, key), cluster_facts(kube, key))
    doc: dict[str, Any] = {"kind": "MemcachedExplanation", "namespace": key.namespace}
    doc |= {"name": key.name, **cluster, **streams}
    trace = (streams["outcome"] or {}).get("traceId") or ""
    doc["traceId"], doc["traceUrl"] = trace, trace_url(trace)
    doc["summary"] = [f"{label}: {text}" for label, text in summary(key, doc)]
    return doc


async def run(s: Session, out: TextIO = sys.stdout) -> int:
    assert s.kube is not None and s.namespace is not None
    key = subjects.object_key(s.namespace, s.args.name)
    doc = await explain(s.nc, s.kube, key)
    if s.args.output in ("json", "yaml"):
        render.document(doc, s.args.output, out)
    else:
        render.lines(summary(key, doc), out)
    return 0
