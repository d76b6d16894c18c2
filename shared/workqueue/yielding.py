"""When one controller steps aside for another: the yield policy, as a pure object.

A queue given ``yield_to`` (the status service's, given the reconciler's) polls that
controller's consumer and, while more than ``yield_backlog`` of its requests wait for a worker,
takes no new request for up to ``yield_pause`` seconds and then one at a time, until the
backlog has stayed small for ``yield_resume`` seconds (the requests taken last are still
running then). The work it defers is derived (a status is folded from what the reconciles
did), its waiting requests coalesce per object meanwhile, and on a shared API server and
shared cores a burst of new objects gets its Deployments sooner. The pause is bounded and one
at a time is not none: if the other controller has no workers at all, this one still
progresses. It never holds back on a guess: while the backlog cannot be read, it does not
yield. The queue polls and applies the limit; this decides it, with an injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """What one poll decided: the requests the queue may run at once now, whether it is
    yielding, what changed, and how long to wait before the next poll."""

    limit: int
    yielding: bool
    limit_changed: bool
    yielding_changed: bool
    warn: bool  # the first failure of a streak (one log line per streak, not per poll)
    wait: float


class YieldPolicy:
    """The limit on a queue's concurrency while another controller has a backlog."""

    def __init__(
        self,
        *,
        concurrency: int,
        backlog: int,
        resume: float,
        pause: float,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._concurrency = concurrency
        self._backlog = backlog
        self._resume = resume
        self._pause = pause
        self._interval = interval
        self._clock = clock
        self.yielding = False
        self.limit = concurrency
        self._failures = 0
        self._calm_since: float | None = None  # while yielding: since when the backlog is small
        self._since: float | None = None  # when this queue began to yield

    def observe(self, backlog: int | None) -> Step:
        """One poll's reading: the other controller's backlog (requests no worker has taken
        yet; 0 when it has no consumer yet), or None when it could not be read."""
        if backlog is None:
            self._failures += 1
        else:
            self._failures = 0
        now = self._clock()
        if backlog is not None and backlog > self._backlog:
            yielding, self._calm_since = True, None
        elif self._failures or not self.yielding:
            yielding = False  # never hold back on a guess
        else:
            # The last requests taken are still running: resume once the backlog has stayed
            # small for `resume` seconds, not the moment the last one is taken.
            self._calm_since = now if self._calm_since is None else self._calm_since
            yielding = now - self._calm_since < self._resume
        yielding_changed = yielding != self.yielding
        if yielding_changed:
            self.yielding = yielding
            self._since = now if yielding else None
        limit = self._concurrency
        if self._since is not None:
            limit = 0 if now - self._since < self._pause else 1
        limit_changed = limit != self.limit
        self.limit = limit
        return Step(
            limit=limit,
            yielding=yielding,
            limit_changed=limit_changed,
            yielding_changed=yielding_changed,
            warn=self._failures == 1,
            wait=self._interval * min(20, 1 + self._failures),
        )
