"""The watcher's dead letters: what it could not publish, kept with the reason.

A message the watcher cannot publish (too large for the server, a subject over the bounds,
refused by the server, or failing for good while connected) must not block the changes behind
it, so it goes to ``mcop.deadletter.watcher.<ns>.<name>`` with the work queue's
``Mcop-Deadletter-*`` headers, and the watcher moves on (publisher.py). :func:`refusal` tells a
publish that failed for good from one worth trying again; :func:`dead_letter` is the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import nats.errors
from nats.js.errors import APIError

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.workqueue.deadletter import (
    DL_BODY_TRUNCATED,
    DL_CONTROLLER,
    DL_DELIVERIES,
    DL_ERROR,
    DL_REASON,
    DL_SUBJECT,
    DL_TIME,
    DL_WORKER,
)

# Dead letters of the watcher: mcop.deadletter.watcher.<ns>.<name>, with the work queue's
# Mcop-Deadletter-* headers. Reasons (CamelCase, like the work queue's):
DEADLETTER_CONTROLLER = "watcher"
MESSAGE_TOO_LARGE = "MessageTooLarge"
# A watch event longer than the watcher reads (shared/kube/watchlines.py).
WATCH_EVENT_TOO_LARGE = "WatchEventTooLarge"
INVALID_SUBJECT = "InvalidSubject"
PERMISSION_DENIED = "PermissionDenied"
PUBLISH_FAILED = "PublishFailed"
DEADLETTER_BODY_BYTES = 1024
_MAX_HEADER_TEXT = 1000
# JetStream's "message size exceeds maximum allowed" (a stream's max_msg_size).
_REFUSED_BY_STREAM = frozenset({10054})


def header_text(text: str) -> str:
    """Arbitrary text (an error, a subject) as one bounded, printable header value."""
    flat = " ".join(text.split()).encode("ascii", "backslashreplace").decode("ascii")
    return flat if len(flat) <= _MAX_HEADER_TEXT else flat[: _MAX_HEADER_TEXT - 3] + "..."


def refusal(err: BaseException, subject: str, last_error: BaseException | None) -> str:
    """The reason a publish failed for good (a dead-letter reason), or '' when it may succeed
    if tried again. A publish the server denies is dropped by the server, which reports the
    violation asynchronously, so the publish itself only times out: the client's last error
    tells why."""
    if isinstance(err, nats.errors.MaxPayloadError):
        return MESSAGE_TOO_LARGE
    if isinstance(err, nats.errors.BadSubjectError | nats.errors.BadHeaderError):
        return INVALID_SUBJECT
    if isinstance(err, APIError) and err.err_code in _REFUSED_BY_STREAM:
        return MESSAGE_TOO_LARGE
    if isinstance(err, TimeoutError) and last_error is not None:
        text = str(last_error).lower()
        if "permissions violation" in text and f'"{subject.lower()}"' in text:
            return PERMISSION_DENIED
    return ""


def dead_letter(
    *,
    subject: str,
    body: bytes,
    headers: Mapping[str, str],
    key: ObjectKey,
    reason: str,
    detail: str,
    attempts: int,
    worker: str,
) -> tuple[str, bytes, dict[str, str]]:
    """The dead-letter record of a message to ``subject`` about ``key``: its subject, body
    (cut to DEADLETTER_BODY_BYTES) and headers (the message's, the reason and where it came
    from, and a message id derived from the message's, so that every replica dead-lettering
    the same change stores one record)."""
    try:
        target = subjects.subject(subjects.DEADLETTER, DEADLETTER_CONTROLLER, key)
    except ValueError:
        target = f"{subjects.PREFIX}.{subjects.DEADLETTER}.{DEADLETTER_CONTROLLER}._._"
    out = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
    if len(body) > DEADLETTER_BODY_BYTES:
        out[DL_BODY_TRUNCATED] = str(len(body))
        body = body[:DEADLETTER_BODY_BYTES]
    out.update(
        {
            DL_REASON: reason,
            DL_ERROR: header_text(detail),
            DL_DELIVERIES: str(attempts),
            DL_SUBJECT: header_text(subject),
            DL_CONTROLLER: DEADLETTER_CONTROLLER,
            DL_WORKER: worker,
            DL_TIME: datetime.now(UTC).isoformat(),
        }
    )
    msg_id = headers.get(events.MSG_ID)
    if msg_id:
        out[events.MSG_ID] = f"mcop-dl.{DEADLETTER_CONTROLLER}.{msg_id}"
    return target, body, out
