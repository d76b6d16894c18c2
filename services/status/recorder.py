"""Kubernetes Events for condition transitions, so ``kubectl describe mc/<name>`` shows the history.

Events are best effort: each CR has a token bucket and a filter for identical repeats
(:class:`EventLimiter`, pure, with an injectable clock) so a flapping CR cannot flood the API
server, and a failure to create an Event is logged and counted, never raised into the status
write it accompanies. :func:`build_event` is the pure shape of one ``events.k8s.io/v1`` Event.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prometheus_client import Counter

from memcached_operator.shared.api.models import API_VERSION, KIND
from memcached_operator.shared.kube.client import EVENT, KubeClient
from memcached_operator.status.transitions import Transition

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "memcached-operator/status"
ACTION = "StatusChanged"
# Limits the API server enforces on events.k8s.io/v1 Events; exceeding one rejects the Event.
NOTE_MAX_BYTES = 1024
NAME_MAX = 253
FIELD_MAX = 128  # reason, action, reportingInstance

EVENTS_RECORDED = Counter(
    "mcop_events_recorded_total",
    "Kubernetes Events created for condition transitions",
    ["type"],
)
EVENTS_DROPPED = Counter(
    "mcop_events_dropped_total",
    "Events not created: rate_limited, duplicate, or error (the API call failed)",
    ["cause"],
)


class Decision(StrEnum):
    """What the limiter says about one Event; the non-send values are the dropped causes."""

    SEND = "send"
    RATE_LIMITED = "rate_limited"
    DUPLICATE = "duplicate"


@dataclass
class _Bucket:
    tokens: float
    updated: float
    # (reason, note) -> when it was last sent
    recent: dict[tuple[str, str], float] = field(default_factory=dict)


class EventLimiter:
    """Per-key token bucket plus suppression of identical (reason, note) repeats.

    A key starts with ``burst`` tokens and regains one every ``refill_seconds``; an Event equal
    to one sent for the same key less than ``duplicate_window`` seconds ago is dropped without
    spending a token. Duplicates are checked first so a flapping condition does not use up the
    budget that the next, different Event needs.
    """

    def __init__(
        self,
        *,
        burst: int = 5,
        refill_seconds: float = 10.0,
        duplicate_window: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or refill_seconds <= 0 or duplicate_window < 0:
            raise ValueError("burst must be >= 1, refill_seconds > 0, duplicate_window >= 0")
        self._burst = burst
        self._refill = refill_seconds
        self._window = duplicate_window
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._next_sweep = clock() + max(duplicate_window, refill_seconds * burst)

    def _refilled(self, bucket: _Bucket, now: float) -> None:
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) / self._refill)
        bucket.updated = now
        bucket.recent = {
            fingerprint: sent
            for fingerprint, sent in bucket.recent.items()
            if now - sent < self._window
        }

    def _sweep(self, now: float) -> None:
        # Without this, every CR ever seen would keep a bucket; one that is full again and
        # remembers no recent Event behaves exactly like a new one, so it can go.
        for key in list(self._buckets):
            bucket = self._buckets[key]
            self._refilled(bucket, now)
            if bucket.tokens >= self._burst and not bucket.recent:
                del self._buckets[key]
        self._next_sweep = now + max(self._window, self._refill * self._burst)

    def decide(self, key: str, reason: str, note: str) -> Decision:
        """Whether to send an Event (reason, note) about ``key``; SEND also spends a token."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(self._burst), updated=now)
        self._refilled(bucket, now)
        if (reason, note) in bucket.recent:
            return Decision.DUPLICATE
        if bucket.tokens < 1:
            return Decision.RATE_LIMITED
        bucket.tokens -= 1
        bucket.recent[(reason, note)] = now
        return Decision.SEND

    def forget(self, key: str) -> None:
        """Drop what is remembered about ``key`` (its CR was deleted)."""
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)


def _truncate_bytes(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    # Cut on a character boundary: a split multi-byte character would be invalid UTF-8.
    return encoded[: limit - 3].decode("utf-8", errors="ignore") + "..."


def event_note(transition: Transition) -> str:
    """The Event's note: the condition and its new status, then the condition's message.

    ``kubectl describe`` shows reason and note but not which condition they belong to, hence
    the prefix.
    """
    head = f"{transition.type} is {transition.new_status}"
    note = f"{head}: {transition.message}" if transition.message else head
    return _truncate_bytes(note, NOTE_MAX_BYTES)


def event_name(cr_name: str, suffix: str) -> str:
    """``<cr-name>.<suffix>``, with the CR name shortened so the whole stays a valid name."""
    prefix = cr_name[: NAME_MAX - len(suffix) - 1].rstrip(".-")
    return f"{prefix}.{suffix}" if prefix else suffix


def micro_time(moment: datetime) -> str:
    """RFC3339 with microseconds in UTC, the MicroTime format eventTime requires."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_event(
    *,
    cr: dict[str, Any],
    transition: Transition,
    instance: str,
    now: datetime,
    suffix: str,
) -> dict[str, Any]:
    """The events.k8s.io/v1 Event about ``transition`` of ``cr``, ready to POST."""
    metadata = cr.get("metadata") or {}
    name = str(metadata.get("name", ""))
    namespace = str(metadata.get("namespace", ""))
    regarding = {
        "apiVersion": cr.get("apiVersion") or API_VERSION,
        "kind": cr.get("kind") or KIND,
        "name": name,
        "namespace": namespace,
        "uid": metadata.get("uid"),
        "resourceVersion": metadata.get("resourceVersion"),
    }
    return {
        "apiVersion": EVENT.api_version,
        "kind": EVENT.kind,
        "metadata": {"name": event_name(name, suffix), "namespace": namespace},
        "regarding": {key: value for key, value in regarding.items() if value},
        "reason": transition.reason[:FIELD_MAX],
        "note": event_note(transition),
        "type": "Warning" if transition.warning else "Normal",
        "action": ACTION,
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:FIELD_MAX],
        "eventTime": micro_time(now),
    }


class EventRecorder:
    """Creates the Events for a CR's condition transitions, within the limiter's budget."""

    def __init__(
        self, kube: KubeClient, *, instance: str, limiter: EventLimiter | None = None
    ) -> None:
        self._kube = kube
        self._instance = instance
        self._limiter = limiter or EventLimiter()

    @staticmethod
    def _key(cr: dict[str, Any]) -> str:
        metadata = cr.get("metadata") or {}
        return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"

    async def record(self, cr: dict[str, Any], transitions: Iterable[Transition]) -> int:
        """Create one Event per transition not dropped; returns how many were created."""
        created = 0
        for transition in transitions:
            if await self._record_one(cr, transition):
                created += 1
        return created

    async def _record_one(self, cr: dict[str, Any], transition: Transition) -> bool:
        key = self._key(cr)
        decision = self._limiter.decide(key, transition.reason, event_note(transition))
        if decision is not Decision.SEND:
            EVENTS_DROPPED.labels(decision.value).inc()
            log.debug("event %s for %s dropped: %s", transition.reason, key, decision.value)
            return False
        body = build_event(
            cr=cr,
            transition=transition,
            instance=self._instance,
            now=datetime.now(UTC),
            suffix=secrets.token_hex(8),
        )
        namespace = body["metadata"]["namespace"]
        try:
            await self._kube.request("POST", EVENT.path(namespace), body=body, resource="events")
        except Exception:
            # An Event is a courtesy to the reader of `kubectl describe`; losing one must not
            # fail or delay the status write that caused it.
            EVENTS_DROPPED.labels("error").inc()
            log.warning("could not create event %s for %s", transition.reason, key, exc_info=True)
            return False
        EVENTS_RECORDED.labels(body["type"]).inc()
        return True

    def forget(self, cr_key: str) -> None:
        """Forget the rate-limit state of a deleted CR (``namespace/name``)."""
        self._limiter.forget(cr_key)
