"""What the reconciler believes of a CR read from the event stream, and when it asks the API.

The event stream is a cache and a record, not an authority: anyone holding a publisher's
credentials can put a message on ``mcop.events.memcached.<ns>.<name>``. So the reconciler
decides *whether* to write from the stream (cheap: no API request when nothing drifted) but
decides *what* to write only from the API server:

1. Before anything, the streamed CR must agree with itself: its body's namespace and name are
   the request key (the subject NATS permissions scope), and its uid and resourceVersion are
   those its CloudEvent headers claim. A disagreement is a forged or corrupted message:
   :class:`ForgedMessage`, dead-lettered with the discrepancy, and no outcome is published for
   the CR (the CR did nothing wrong, so no condition on it either).
2. When a write is needed, the CR is read from the API server (one GET per write, not per
   reconcile) and the desired Deployment is built from that copy only; its namespace is the
   request key's. If the API's copy has the resourceVersion the event claimed but different
   content, the event was forged: :class:`ForgedMessage`. A different uid or resourceVersion
   is a stream that lags (a re-created CR, a replayed or simply older event): counted, and the
   write proceeds from the API's copy.

So no message can move a Deployment to a state the API server's CR does not ask for, nor into
another namespace. What a forged message can still do is make the reconciler *skip* a write
until the next genuine change or resync (it claims a spec that matches the live Deployment);
that is a delay, never a wrong write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.runtime import metrics
from memcached_operator.shared.runtime.errors import PermanentError

FORGED_EVENT = "ForgedEvent"

for _reason in ("key", "uid", "resource_version", "content", "stale"):
    metrics.messages_distrusted_total.labels("reconcile", _reason)


class ForgedMessage(PermanentError):
    """A message that contradicts its own subject, its headers or the API server."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(FORGED_EVENT, message, dead_letter=True)
        self.what = what


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def check_event(key: ObjectKey, headers: Mapping[str, str], obj: Mapping[str, Any]) -> None:
    """Raise :class:`ForgedMessage` unless the streamed CR agrees with its subject (``key``)
    and with the uid and resourceVersion its headers claim."""
    meta = _meta(obj)
    body_key = ObjectKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    if body_key != key:
        _distrust("key")
        raise ForgedMessage(
            "key",
            f"event on the subject of {key} carries the object {body_key or '(no name)'}",
        )
    claimed_uid = events.decode_value(headers.get("ce-id", "")).split(":", 1)[0]
    uid = str(meta.get("uid") or "")
    if claimed_uid != uid:
        _distrust("uid")
        raise ForgedMessage(
            "uid", f"event for {key} claims uid {claimed_uid!r} but carries uid {uid!r}"
        )
    claimed_rv = events.decode_value(headers.get("ce-resourceversion", ""))
    rv = str(meta.get("resourceVersion") or "")
    if claimed_rv != rv:
        _distrust("resource_version")
        raise ForgedMessage(
            "resource_version",
            f"event for {key} claims resourceVersion {claimed_rv!r} but carries {rv!r}",
        )


def authoritative(
    key: ObjectKey, streamed: Mapping[str, Any], api: Mapping[str, Any]
) -> Mapping[str, Any]:
    """The copy to write from (always ``api``), after checking the streamed copy against it:
    the same uid and resourceVersion with a different spec, labels or annotations is a forgery
    (raises :class:`ForgedMessage`); an older or other incarnation is only counted."""
    s_meta, a_meta = _meta(streamed), _meta(api)
    same_version = str(s_meta.get("uid") or "") == str(a_meta.get("uid") or "") and str(
        s_meta.get("resourceVersion") or ""
    ) == str(a_meta.get("resourceVersion") or "")
    if not same_version:
        _distrust("stale")
        return api
    for field, s_value, a_value in (
        ("spec", streamed.get("spec"), api.get("spec")),
        ("metadata.labels", s_meta.get("labels"), a_meta.get("labels")),
        ("metadata.annotations", s_meta.get("annotations"), a_meta.get("annotations")),
        ("metadata.generation", s_meta.get("generation"), a_meta.get("generation")),
    ):
        if (s_value or None) != (a_value or None):
            _distrust("content")
            raise ForgedMessage(
                "content",
                f"event for {key} at resourceVersion {a_meta.get('resourceVersion')} differs "
                f"from the API server's object in {field}",
            )
    return api


def _distrust(reason: str) -> None:
    metrics.messages_distrusted_total.labels("reconcile", reason).inc()
