"""Capped exponential backoff with jitter, for every retry in the system.

The work queue uses it between failed deliveries of a request, the watcher between
reconnects of a broken watch. A server's own hint (a 429's Retry-After) wins over the
computed delay, with a little jitter on top so that clients told the same time do not return
in step.
"""

from __future__ import annotations


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait after the ``attempt``-th failed delivery (1-based).

    Exponential (``base * 2**(attempt-1)``), capped at ``cap``, with "equal jitter": the delay
    is drawn from the upper half of that ceiling, so retries of many keys that failed together
    spread out while each still waits at least half the ceiling. ``jitter`` is in [0, 1).
    """
    exponent = max(0, attempt - 1)
    ceiling = cap if exponent >= 64 else min(cap, base * 2.0**exponent)
    return ceiling / 2 + ceiling / 2 * jitter


def retry_delay(
    *, attempt: int, base: float, cap: float, retry_after: float | None, jitter: float
) -> float:
    """The delay before the next attempt; a server's ``retry_after`` is honoured as a minimum."""
    if retry_after is not None:
        # Up to 10% on top so that clients told the same Retry-After do not return in step.
        return max(0.0, retry_after) * (1 + 0.1 * jitter)
    return backoff_delay(attempt, base=base, cap=cap, jitter=jitter)
