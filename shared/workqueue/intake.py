"""What the queue makes of a delivered message before any handler sees it.

The message's subject gives the object's key; its headers say which attempt this is among
those that count towards ``max_deliveries`` (JetStream's delivery count, less the deferral of a
marked copy, plus the counted failures of earlier copies in ``Mcop-Failures``); and a message
that can never be handled (a subject that does not parse, too large, a body that is not a JSON
object, a required header missing) is refused as a :class:`PoisonRequest`. All pure.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from memcached_operator.shared.bus.subjects import REQUESTS, ObjectKey, parse
from memcached_operator.shared.runtime import jsonc
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.deadletter import (
    MALFORMED_BODY,
    MISSING_HEADER,
    REQUEST_TOO_LARGE,
    UNPARSABLE_SUBJECT,
)
from memcached_operator.shared.workqueue.types import (
    FAILURES,
    NOT_BEFORE,
    TRANSIENT_RETRIES,
    PoisonRequest,
    Request,
)


def parse_key(controller: Controller, subject: str) -> ObjectKey:
    """The object a request of ``controller`` on ``subject`` is about."""
    try:
        parsed = parse(subject)
    except ValueError as err:
        raise PoisonRequest(UNPARSABLE_SUBJECT, str(err)) from None
    if parsed.family != REQUESTS or parsed.kind != controller.name:
        raise PoisonRequest(
            UNPARSABLE_SUBJECT, f"not a request of controller {controller.name}: {subject}"
        )
    return parsed.key


def check_body(body: bytes) -> None:
    """A body must be a JSON object in UTF-8."""
    try:
        doc = jsonc.loads(body)
    except ValueError as err:  # UnicodeDecodeError is one
        raise PoisonRequest(MALFORMED_BODY, f"the body is not JSON in UTF-8: {err}") from None
    if not isinstance(doc, dict):
        raise PoisonRequest(
            MALFORMED_BODY, f"the body must be a JSON object, not {type(doc).__name__}"
        )


def check_content(
    request: Request, *, max_request_bytes: int, required_headers: Collection[str]
) -> None:
    """Refuse a request too large, without a required header, or with a malformed body."""
    size = len(request.body) + sum(len(k) + len(v) + 4 for k, v in request.headers.items())
    if size > max_request_bytes:
        raise PoisonRequest(
            REQUEST_TOO_LARGE,
            f"the request has {size} bytes, more than the limit of {max_request_bytes}",
        )
    missing = [name for name in required_headers if name not in request.headers]
    if missing:
        raise PoisonRequest(MISSING_HEADER, f"missing header(s): {', '.join(missing)}")
    if request.body:
        check_body(request.body)


def not_before(headers: Mapping[str, str]) -> float | None:
    """The time (epoch seconds) before which a marked copy must not run; None if unmarked."""
    value = headers.get(NOT_BEFORE)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def count_header(value: str | None) -> int:
    """A non-negative count the queue wrote into a header (0 when absent or unreadable)."""
    if value is None or not value.isdigit() or len(value) > 9:
        return 0
    return int(value)


def request_of(
    controller: Controller,
    *,
    key: ObjectKey,
    headers: Mapping[str, str],
    body: bytes,
    num_delivered: int,
    published_at: datetime,
    sequence: int,
) -> Request:
    """The request a message is, with its attempt number among those that count."""
    # The first delivery of a marked copy is its deferral, whenever it arrives (so the count
    # is exact); the counted failures of earlier copies come in a header.
    deferrals = 1 if not_before(headers) is not None else 0
    delivery = count_header(headers.get(FAILURES)) + max(1, num_delivered - deferrals)
    return Request(
        key=key,
        controller=controller.name,
        headers=headers,
        body=body,
        delivery=delivery,
        published_at=published_at,
        sequence=sequence,
        retries=count_header(headers.get(TRANSIENT_RETRIES)),
    )
