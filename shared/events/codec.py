"""CloudEvents in binary mode over NATS: the public format of the event stream.

Each observed change of a watched object is one message: the body is the object as JSON
(without managedFields), the CloudEvents attributes travel as ``ce-`` headers whose values are
percent-encoded as the NATS protocol binding says (space, ``"``, ``%`` and anything outside
U+0021..U+007E). Extension attributes carry what auditors ask for without parsing the body:
``ce-kind``, ``ce-namespace``, ``ce-name``, ``ce-resourceversion``, ``ce-fieldmanager`` (the
field manager of the newest managedFields entry, i.e. who made the change), and on events of
objects a Memcached owns, ``ce-owner`` (the Memcached's name) and for pods ``ce-ready``
(``true``/``false``), so that a reader of ownership and readiness can consume headers only.

Event types, one per kind and change (documented in the README):
``io.memcached-operator.<kind>.added|modified|deleted`` for kinds memcached, deployment, pod,
and ``io.memcached-operator.reconcile.outcome`` for outcomes of reconciles.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from memcached_operator.shared.runtime import jsonc

SPECVERSION = "1.0"
TYPE_PREFIX = "io.memcached-operator"
SOURCE = "/memcached-operator/watcher"
CHANGES = ("added", "modified", "deleted")
MSG_ID = "Nats-Msg-Id"
# Extension attributes of owned objects' events (header ce-<name>): the owning Memcached's
# name, and for pods "true"/"false" for readiness and the pod's IP (once it has one).
OWNER_ATTR = "owner"
READY_ATTR = "ready"
IP_ATTR = "podip"

# Printable ASCII except space, '"' and '%' stays as is; everything else is escaped.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


_ALL_SAFE = re.compile(r"[\x21\x23\x24\x26-\x7e]*")


def encode_value(value: str) -> str:
    if _ALL_SAFE.fullmatch(value):
        return value  # most values: nothing to escape
    return quote(value, safe=_SAFE)


def decode_value(value: str) -> str:
    return unquote(value)


def event_type(kind: str, change: str) -> str:
    return f"{TYPE_PREFIX}.{kind.lower()}.{change}"


def last_field_manager(obj: Mapping[str, Any]) -> str:
    """The manager of the newest managedFields entry (by time), '' when there is none."""
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    best = ""
    best_time = ""
    for entry in entries:
        when = str(entry.get("time") or "")
        if when >= best_time:
            best_time = when
            best = str(entry.get("manager") or "")
    return best


def last_spec_writer(obj: Mapping[str, Any]) -> str:
    """The one manager whose write is the newest on the object itself (status-subresource
    entries left out), or '' when there is none or several wrote within that second."""
    entries = [
        e
        for e in (obj.get("metadata") or {}).get("managedFields") or []
        if e.get("subresource") != "status"
    ]
    # Writes through the scale subresource are recorded without a time: then nobody can say.
    if not entries or any(not e.get("time") for e in entries):
        return ""
    newest = max(str(e.get("time") or "") for e in entries)
    managers = {str(e.get("manager") or "") for e in entries if str(e.get("time") or "") == newest}
    return managers.pop() if len(managers) == 1 else ""


def strip_managed_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def change_id(uid: str, resource_version: str, change: str) -> str:
    """The de-duplication id of one change. An object is created once and deleted once per
    uid, so those two are keyed by uid alone: a watcher that finds an object by relisting sees
    it at a later resourceVersion than the creation, and a deletion found by relisting has no
    resourceVersion of its own, yet both must collapse with what another replica published."""
    if change in ("added", "deleted"):
        return f"{uid}:{change}"
    return f"{uid}:{resource_version}:{change}"


@dataclass(frozen=True)
class Event:
    """One decoded event (used by the audit subscriber and the tests)."""

    id: str
    type: str
    source: str
    subject: str
    time: str
    kind: str
    namespace: str
    name: str
    resource_version: str
    field_manager: str
    traceparent: str
    data: dict[str, Any]

    @property
    def change(self) -> str:
        return self.type.rsplit(".", 1)[-1]

    @property
    def trace_id(self) -> str:
        parts = self.traceparent.split("-")
        return parts[1] if len(parts) == 4 else ""


def encode(
    *,
    kind: str,
    change: str,
    obj: Mapping[str, Any],
    when: dt.datetime | None = None,
    extra_headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body of the CloudEvent for one change of one object (``extensions``: more
    extension attributes, by name)."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    name = str(meta.get("name") or "")
    rv = str(meta.get("resourceVersion") or "")
    uid = str(meta.get("uid") or "")
    stamp = (when or dt.datetime.now(dt.UTC)).isoformat().replace("+00:00", "Z")
    attrs = {
        "specversion": SPECVERSION,
        "id": change_id(uid, rv, change),
        "source": SOURCE,
        "type": event_type(kind, change),
        "subject": f"{namespace}/{name}" if namespace else name,
        "time": stamp,
        "datacontenttype": "application/json",
        "kind": kind.lower(),
        "namespace": namespace,
        "name": name,
        "resourceversion": rv,
        "fieldmanager": last_field_manager(obj),
        **(extensions or {}),
    }
    headers = {f"ce-{k}": encode_value(v) for k, v in attrs.items()}
    headers["Content-Type"] = "application/json"
    headers[MSG_ID] = attrs["id"]
    if extra_headers:
        headers.update(extra_headers)
    body = jsonc.dumps(strip_managed_fields(obj))
    return headers, body


def decode(headers: Mapping[str, str], data: bytes) -> Event:
    """Parse one event message; raises ValueError on anything that is not one of ours."""
    if headers.get("ce-specversion") != SPECVERSION:
        raise ValueError("not a CloudEvent in binary mode (ce-specversion missing or not 1.0)")

    def attr(name: str) -> str:
        return decode_value(headers.get(f"ce-{name}", ""))

    try:
        body = jsonc.loads(data) if data else {}
    except ValueError as err:
        raise ValueError(f"event body is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise ValueError("event body is not a JSON object")
    return Event(
        id=attr("id"),
        type=attr("type"),
        source=attr("source"),
        subject=attr("subject"),
        time=attr("time"),
        kind=attr("kind"),
        namespace=attr("namespace"),
        name=attr("name"),
        resource_version=attr("resourceversion"),
        field_manager=attr("fieldmanager"),
        traceparent=headers.get("traceparent", ""),
        data=body,
    )
