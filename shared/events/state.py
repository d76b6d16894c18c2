"""The event stream as a shared informer cache: the newest observed state of one object.

The watcher stores every change of every watched object on its own subject, so the last
message on ``mcop.events.<kind>.<ns>.<name>`` is the object as the watcher last saw it — a
direct get away, for any process, without asking the API server. A request always reaches a
worker after the event that caused it (the watcher publishes the event first, on the same
connection), so a read here is at least as fresh as the change being handled; staleness beyond
that is corrected the level-based way, by the request the next change brings. Callers fall
back to the API server where acting on a missing entry would be unsafe.

On a replicated stream "at least as fresh" needs a barrier: a direct get may be answered by a
follower that does not yet hold the event. A request therefore carries, in ``Mcop-Events-Seq``,
the stream sequence of the event (or outcome) that caused it, stored before the request was
published; :func:`snapshot` reads only from a replica that holds it (shared/bus/directget.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from memcached_operator.shared.bus import directget, subjects
from memcached_operator.shared.bus.directget import StoredMsg
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.kube.client import KubeClient, Resource
from memcached_operator.shared.runtime import jsonc

log = logging.getLogger("memcached_operator.state")

# On a request: the events-stream sequence its reads must include (see the module docstring).
AFTER_HEADER = "Mcop-Events-Seq"


def after(headers: Mapping[str, str] | None) -> int:
    """The barrier a request carries; 0 when none, or when it is not a plain, sane number (a
    header is input like any other: a bad one costs the barrier, nothing else)."""
    text = (headers or {}).get(AFTER_HEADER, "")
    if not text or len(text) > 20 or not (text.isascii() and text.isdigit()):
        return 0
    return int(text)


def after_header(seq: int) -> dict[str, str]:
    """The header that makes a request's reads include events-stream sequence ``seq``."""
    return {AFTER_HEADER: str(seq)} if seq > 0 else {}


@dataclass(frozen=True)
class Observed:
    """The last change the stream holds for an object: its type and the object."""

    change: str
    obj: dict[str, Any]

    @property
    def exists(self) -> bool:
        return self.change != "deleted"


def event_subject(kind: str, key: ObjectKey) -> str:
    """The subject of the changes of one object of ``kind`` (memcached, deployment, pod)."""
    return subjects.subject(subjects.EVENTS, kind, key)


@dataclass(frozen=True)
class Snapshot:
    """The newest messages of some subjects of the event stream, all read in one request."""

    messages: dict[str, StoredMsg]

    def message(self, subject: str) -> StoredMsg | None:
        return self.messages.get(subject)

    def observed(self, kind: str, key: ObjectKey) -> Observed | None:
        """The newest event for the object, or None when the stream has never seen it."""
        msg = self.messages.get(event_subject(kind, key))
        if msg is None:
            return None
        change = events.decode_value(msg.headers.get("ce-type", "")).rsplit(".", 1)[-1]
        try:
            obj = jsonc.loads(msg.data or b"{}")
        except ValueError:
            log.warning("unreadable event on %s; ignoring it", msg.subject)
            return None
        if change not in events.CHANGES or not isinstance(obj, dict):
            return None
        return Observed(change, obj)

    def object(self, kind: str, key: ObjectKey) -> dict[str, Any] | None:
        """The object as the stream last showed it; None when deleted or never streamed."""
        observed = self.observed(kind, key)
        return observed.obj if observed is not None and observed.exists else None

    async def object_or_get(
        self, kube: KubeClient, kind: str, resource: Resource, key: ObjectKey
    ) -> dict[str, Any] | None:
        """The object from the stream (no API call); from the API server only when the stream
        has never seen it (e.g. a request published by hand before the watcher ran)."""
        observed = self.observed(kind, key)
        if observed is not None:
            return observed.obj if observed.exists else None
        return await kube.get(resource, key.namespace, key.name)


async def snapshot(js: JetStreamContext, wanted: Iterable[str], *, at_least: int = 0) -> Snapshot:
    """The newest message of each subject in ``wanted`` (those that have one), in one request,
    as of events-stream sequence ``at_least`` or later (a request's :func:`after`); a failure
    to read is a TransientError."""
    return Snapshot(await directget.last_msgs(js, EVENTS_STREAM, list(wanted), at_least=at_least))
