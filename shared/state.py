"""The event stream as a shared informer cache: the newest observed state of one object.

The watcher stores every change of every watched object on its own subject, so the last
message on ``mcop.events.<kind>.<ns>.<name>`` is the object as the watcher last saw it — a
direct get away, for any process, without asking the API server. A request always reaches a
worker after the event that caused it (the watcher publishes the event first, on the same
connection), so a read here is at least as fresh as the change being handled; staleness beyond
that is corrected the level-based way, by the request the next change brings. Callers fall
back to the API server where acting on a missing entry would be unsafe.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared import events, subjects
from shared.errors import TransientError
from shared.kube import KubeClient, Resource
from shared.streams import EVENTS_STREAM
from shared.subjects import ObjectKey

log = logging.getLogger("memcached_operator.state")


@dataclass(frozen=True)
class Observed:
    """The last change the stream holds for an object: its type and the object."""

    change: str
    obj: dict[str, Any]

    @property
    def exists(self) -> bool:
        return self.change != "deleted"


async def last_observed(js: JetStreamContext, kind: str, key: ObjectKey) -> Observed | None:
    """The newest event for the object, or None when the stream has never seen it."""
    subject = subjects.subject(subjects.EVENTS, kind, key)
    try:
        msg = await js.get_last_msg(EVENTS_STREAM, subject, direct=True)
    except NotFoundError:
        return None
    except Exception as err:
        raise TransientError(f"reading {subject} from the event stream: {err}") from err
    headers = msg.headers or {}
    change = events.decode_value(headers.get("ce-type", "")).rsplit(".", 1)[-1]
    try:
        obj = json.loads(msg.data or b"{}")
    except ValueError:
        log.warning("unreadable event on %s; ignoring it", subject)
        return None
    if change not in events.CHANGES or not isinstance(obj, dict):
        return None
    return Observed(change, obj)


async def streamed_object(js: JetStreamContext, kind: str, key: ObjectKey) -> dict[str, Any] | None:
    """The object as the stream last showed it; None when deleted or never streamed."""
    observed = await last_observed(js, kind, key)
    return observed.obj if observed is not None and observed.exists else None


async def streamed_or_get(
    js: JetStreamContext, kube: KubeClient, kind: str, resource: Resource, key: ObjectKey
) -> dict[str, Any] | None:
    """The object from the stream (no API call); from the API server only when the stream has
    never seen it (e.g. a request published by hand before the watcher ran)."""
    observed = await last_observed(js, kind, key)
    if observed is not None:
        return observed.obj if observed.exists else None
    return await kube.get(resource, key.namespace, key.name)
