"""Where the informers start: the last change per object that the events stream holds.

A watcher that starts (or restarts) compares what it lists with what was published before
(informer.py), so that a change published by an earlier run or another replica is not
published again as new, and a deletion missed while no watcher ran is still noticed.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.replay import replay
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.runtime.errors import TransientError
from memcached_operator.watcher.informer import Known

log = logging.getLogger("memcached_operator.watcher")


async def load_known(
    js: JetStreamContext, kind: str, *, namespace: str | None = None
) -> dict[ObjectKey, Known]:
    """The last change per object of `kind` that the stream holds, as the informer's starting
    point; objects whose last event is a deletion are left out."""
    filter_subject = subjects.wildcard(subjects.EVENTS, kind, namespace)
    known: dict[ObjectKey, Known] = {}
    config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, headers_only=True)
    try:
        async for msg in replay(js, filter_subject, stream=EVENTS_STREAM, config=config):
            if msg is None:
                continue
            headers = msg.headers or {}
            try:
                parsed = subjects.parse(msg.subject)
            except ValueError:
                continue
            ce_id = events.decode_value(headers.get("ce-id", ""))
            ce_type = events.decode_value(headers.get("ce-type", ""))
            if ce_type.endswith(".deleted"):
                known.pop(parsed.key, None)
                continue
            known[parsed.key] = Known(
                uid=ce_id.split(":", 1)[0],
                resource_version=events.decode_value(headers.get("ce-resourceversion", "")),
            )
    except Exception as err:
        raise TransientError(f"reading {kind} state from the stream: {err}") from err
    log.info("loaded %d known %s objects from the stream", len(known), kind)
    return known
