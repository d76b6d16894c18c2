"""The dead-letter record: what a request that will never run leaves behind, and why.

A request is dead-lettered when it reached ``max_deliveries``, when its handler blamed the
message itself (a PermanentError with ``dead_letter``), or when it is poison (a subject that
does not parse, too large, a body that is not a JSON object, a required header missing). The
record is the request's own headers and body plus ``Mcop-Deadletter-*`` headers saying why,
published to ``mcop.deadletter.<controller>.<namespace>.<name>``. Built here without I/O; the
queue publishes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.runtime.errors import PermanentError, TransientError
from memcached_operator.shared.workqueue.controller import Controller

DL_REASON = "Mcop-Deadletter-Reason"
DL_ERROR = "Mcop-Deadletter-Error"
DL_DELIVERIES = "Mcop-Deadletter-Deliveries"
DL_SUBJECT = "Mcop-Deadletter-Subject"
DL_SEQUENCE = "Mcop-Deadletter-Sequence"
DL_CONTROLLER = "Mcop-Deadletter-Controller"
DL_WORKER = "Mcop-Deadletter-Worker"
DL_TIME = "Mcop-Deadletter-Time"
DL_BODY_TRUNCATED = "Mcop-Deadletter-Body-Truncated"

# Dead-letter reasons (CamelCase, like condition reasons).
MAX_DELIVERIES_EXCEEDED = "MaxDeliveriesExceeded"
UNPARSABLE_SUBJECT = "UnparsableSubject"
REQUEST_TOO_LARGE = "RequestTooLarge"
MALFORMED_BODY = "MalformedBody"
MISSING_HEADER = "MissingHeader"

_MAX_HEADER_VALUE = 1000
# Of a request too large to keep whole: the bytes of its body that are kept, as evidence.
_TRUNCATED_BODY = 1024


def header_value(text: str) -> str:
    """Fit arbitrary text (an error message) into one header value."""
    flat = " ".join(text.split())
    flat = flat.encode("ascii", "backslashreplace").decode("ascii")
    return flat if len(flat) <= _MAX_HEADER_VALUE else flat[: _MAX_HEADER_VALUE - 3] + "..."


def publisher_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers to copy onto a new message: without JetStream's own (``Nats-*``), which
    would make the copy a duplicate (``Nats-Msg-Id``) or fail an expectation."""
    return {k: v for k, v in headers.items() if not k.startswith("Nats-")}


@dataclass(frozen=True)
class DeadLetter:
    """A dead-letter message ready to publish, with the reason and error text it records."""

    subject: str
    body: bytes
    headers: dict[str, str]
    reason: str
    text: str


def dead_letter(
    *,
    controller: Controller,
    key: ObjectKey | None,
    error: Exception,
    subject: str,
    headers: Mapping[str, str],
    body: bytes,
    deliveries: int,
    sequence: int,
    worker: str,
    max_request_bytes: int,
    now: datetime,
) -> DeadLetter:
    """The record of request ``sequence`` (on ``subject``, ``key`` None when the subject has
    none) given up after ``deliveries`` for ``error``."""
    reason = error.reason if isinstance(error, PermanentError) else MAX_DELIVERIES_EXCEEDED
    text = error.message if isinstance(error, PermanentError | TransientError) else repr(error)
    out = publisher_headers(headers)
    if reason == REQUEST_TOO_LARGE:
        # Keep the evidence, not the whole payload (it may not even fit in a message).
        out[DL_BODY_TRUNCATED] = str(len(body))
        body = body[:_TRUNCATED_BODY]
        if sum(len(k) + len(v) for k, v in out.items()) > max_request_bytes:
            out = {DL_BODY_TRUNCATED: out[DL_BODY_TRUNCATED]}
    out.update(
        {
            DL_REASON: reason,
            DL_ERROR: header_value(text),
            DL_DELIVERIES: str(deliveries),
            DL_SUBJECT: header_value(subject),
            DL_SEQUENCE: str(sequence),
            DL_CONTROLLER: controller.name,
            DL_WORKER: worker,
            DL_TIME: now.isoformat(),
            # A retry after a crash between this publish and the term is not a second copy.
            "Nats-Msg-Id": f"mcop-dl.{controller.name}.{sequence}",
        }
    )
    return DeadLetter(
        subject=controller.deadletter_subject(key),
        body=body,
        headers=out,
        reason=reason,
        text=text,
    )
