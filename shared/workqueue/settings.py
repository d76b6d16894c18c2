"""How one process's share of a work queue is tuned: a value object, checked once.

The fields that a controller process takes from its flags keep the flags' ``dest`` names
(``concurrency``, ``ack_wait``, ``lease_ttl``, ``max_deliveries``, ``backoff_cap``,
``yield_backlog``, ``yield_pause``), so options.py maps one to the other name for name.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueSettings:
    """The tuning of a :class:`~memcached_operator.shared.workqueue.queue.KeyedWorkQueue`.

    ``concurrency``: requests run at once by this process. ``ack_wait``: seconds before a
    silent worker's request is redelivered. ``lease_ttl``: seconds a dead worker's per-object
    lease outlives it. ``max_deliveries``: attempts that count (failures, crashes) before a
    request is dead-lettered. ``backoff_base``/``backoff_cap``: the retry backoff.
    ``max_request_bytes``/``required_headers``: what a request must be not to be poison.
    ``fetch_timeout``: the longest wait of one fetch. ``depth_interval``: seconds between two
    readings of the queue's depth. ``yield_*``: see yielding.py (used only with ``yield_to``).
    """

    concurrency: int = 8
    ack_wait: float = 30.0
    lease_ttl: float = 30.0
    max_deliveries: int = 10
    backoff_base: float = 0.2
    backoff_cap: float = 60.0
    max_request_bytes: int = 64 * 1024
    required_headers: Collection[str] = ()
    fetch_timeout: float = 1.0
    depth_interval: float = 5.0
    yield_backlog: int = 16
    yield_interval: float = 0.5
    yield_resume: float = 1.0
    yield_pause: float = 10.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_deliveries < 1:
            raise ValueError("concurrency and max_deliveries must be at least 1")
        if self.ack_wait <= 0 or self.lease_ttl <= 0:
            raise ValueError("ack_wait and lease_ttl must be positive")
        # A tuple: hashable, and not changed behind the queue's back.
        object.__setattr__(self, "required_headers", tuple(self.required_headers))
