"""The two kinds of failure every handler reports: worth retrying, or not.

Transient errors (API 5xx, 429, 409 conflicts, timeouts, a broken connection to the API server
or to NATS) are retried with capped exponential backoff; a `retry_after` from the server (429
Retry-After) overrides the computed delay. Permanent errors (an invalid spec, an ownership
conflict) stop retrying and are reported with a CamelCase reason, which ends up as the reason of
a condition on the CR. :func:`as_transient` is the one place that decides whether an exception
a handler let through is one of the transient kind, whatever library raised it.
A permanent error that says something about a *message* rather than the object (a forged or
corrupted one) asks for ``dead_letter``: the work queue then keeps the message in the
dead-letter stream with the reason, as evidence.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors


class TransientError(Exception):
    """Retry later; `retry_after` (seconds) is the server's own hint when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class PermanentError(Exception):
    """Do not retry; `reason` is CamelCase (e.g. InvalidSpec), `message` is for humans."""

    def __init__(self, reason: str, message: str, *, dead_letter: bool = False) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.dead_letter = dead_letter


class ClassifiedError(Exception):
    """An error reply from a server that knows which kind of failure it is (the Kubernetes
    client's ApiError: 5xx and 429 are transient, 422 is not)."""

    def classify(self) -> TransientError | PermanentError:
        raise NotImplementedError


# NATS failures that say nothing about the request: the connection is down or reconnecting,
# the server did not answer in time, JetStream is (re)starting or a stream is full for now
# (503, e.g. "maximum bytes exceeded" on a discard-new stream until the queue drains).
_NATS_TRANSIENT = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)


def as_transient(error: BaseException) -> TransientError | None:
    """``error`` as a TransientError when it is a failure of the transient kind, else None.

    A TransientError itself; a ClassifiedError that classifies as transient; a NATS connection,
    time-out or "unavailable" error; a time-out or a broken connection of any other client
    (``TimeoutError``, ``ConnectionError``). Anything else is a failure of the handler itself.
    """
    if isinstance(error, TransientError):
        return error
    if isinstance(error, ClassifiedError):
        classified = error.classify()
        return classified if isinstance(classified, TransientError) else None
    if isinstance(error, (*_NATS_TRANSIENT, TimeoutError, ConnectionError)):
        return TransientError(f"{type(error).__name__}: {error}".rstrip(": "))
    return None
