"""Per-object leases held in this process's memory: runs of one object never overlap within
the process, at no cost on the bus.

A controller whose every write is guarded by the object's ``resourceVersion`` (optimistic
concurrency, as controller-runtime's status updates are) does not need the fleet-wide lease of
lease.py: when two processes run one object at once, the API server refuses the second write
with a conflict and that run reads the object again. Such a controller is declared
``Controller(..., exclusive="process")`` (controller.py) and saves the lease's two messages and
one round trip per run. Within a process, runs of one object are still kept apart, so that a
burst of requests for it costs one run after another (coalesced in the stream meanwhile), not
a conflict each.

Same interface as :class:`~memcached_operator.shared.workqueue.lease.Leases`; a lease is never
lost (no TTL can expire under a holder that is alive), and the release markers that let a
request overtaken before its first attempt let go are this process's own (lease.py's
:class:`Markers`): an older request of an object run by another process runs after the newer
one, a no-op, since a run reads the newest state.
"""

from __future__ import annotations

import itertools
import time

from memcached_operator.shared.workqueue.lease import Clock, Markers, Overtaken, overtaken


class ProcessLeases:
    """Create-if-absent and delete in a dict: the lease store of a controller that is
    ``exclusive="process"``."""

    def __init__(self, *, ttl: float, clock: Clock = time.monotonic) -> None:
        # Only paces keep-alive's in-progress acks (a third of it, or of the ack wait).
        self.ttl = ttl
        self._held: dict[str, int] = {}
        self._revisions = itertools.count(1)
        self._markers = Markers(clock=clock)

    def __len__(self) -> int:
        return len(self._held)

    async def try_acquire(
        self, name: str, value: bytes, *, sequence: int = 0
    ) -> int | Overtaken | None:
        """The new lease's revision; None while a run of this process holds it;
        :class:`Overtaken` when a run of a newer request of the object ended here a moment ago."""
        if name in self._held:
            return None
        newer = overtaken(self._markers.ran(name), sequence)
        if newer is not None:
            return newer
        revision = next(self._revisions)
        self._held[name] = revision
        return revision

    async def refresh(self, name: str, revision: int, value: bytes) -> int:
        return revision

    async def release(self, name: str, revision: int, *, ran: int = 0) -> None:
        if self._held.get(name) == revision:
            del self._held[name]
            self._markers.wrote(name, ran=ran)
