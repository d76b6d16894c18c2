"""Liveness as progress: whether a process that has work waiting is getting it done.

A service is alive when it makes progress, not when its event loop answers: a watcher whose
every publish fails, or a queue that stopped fetching, still serves /healthz. So the parts
that do the work report two things to one tracker per process (:data:`TRACKER`, as Prometheus
has one default registry): how much work each of them has waiting now (:meth:`Progress.waiting`,
a level per source: unconfirmed publishes, requests no worker has fetched) and each step of
progress (:meth:`Progress.progressed`: a publish confirmed, a batch fetched, a request
handled). :meth:`Progress.stalled_for` is how long work has been waiting without any progress:
zero while nothing waits (an idle service is healthy), counted from the later of the last
progress and the moment work began to wait. /healthz fails once that exceeds the configured
bound (shared/runtime/health.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Work waiting per source, and when the process last made progress."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: dict[str, int] = {}
        self._since = clock()  # the last progress, or when work began to wait

    @property
    def pending(self) -> int:
        """Units of work waiting now, over all sources."""
        return sum(self._waiting.values())

    def waiting(self, source: str, count: int) -> None:
        """``source`` has ``count`` units of work waiting now (0: none)."""
        if count > 0 and self.pending == 0:
            self._since = self._clock()  # idle until now: the stall starts counting here
        if count > 0:
            self._waiting[source] = count
        else:
            self._waiting.pop(source, None)

    def progressed(self) -> None:
        """One step of progress (a unit of work done, or a step towards it)."""
        self._since = self._clock()

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds that work has waited without progress; 0 when nothing waits."""
        if self.pending == 0:
            return 0.0
        return max(0.0, (self._clock() if now is None else now) - self._since)


# The process's tracker, fed by the publisher and the work queue, read by /healthz.
TRACKER = Progress()
