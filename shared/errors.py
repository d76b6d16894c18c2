"""The two kinds of failure every handler reports: worth retrying, or not.

Transient errors (API 5xx, 429, 409 conflicts, timeouts, a broken connection) are retried with
capped exponential backoff; a `retry_after` from the server (429 Retry-After) overrides the
computed delay. Permanent errors (an invalid spec, an ownership conflict) stop retrying and are
reported with a CamelCase reason, which ends up as the reason of a condition on the CR.
A permanent error that says something about a *message* rather than the object (a forged or
corrupted one) asks for ``dead_letter``: the work queue then keeps the message in the
dead-letter stream with the reason, as evidence.
"""

from __future__ import annotations


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
