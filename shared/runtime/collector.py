"""How each service process sets Python's cyclic garbage collector.

The services allocate and free many small containers per message (every JSON object decoded,
every header dict, every asyncio future), nearly all of them freed by reference counting at
once. With CPython's default thresholds (700, 10, 10) the collector still runs a young
collection every 700 net allocations and walks everything each time, so a busy service spends
a share of its CPU looking for cycles it seldom finds. Two settings, as is usual for
long-running servers:

- ``gc.freeze()`` once start-up is done: what was made until then (modules, classes, settings,
  the metric registry) is never scanned again.
- A young generation of 10,000 allocations instead of 700, the older ones as before, so a full
  collection still comes after 100 young ones (and CPython's rule that it waits until a quarter
  of the long-lived objects are new still holds).

Measured with ``python -m bench.watcher_cpu --rate 0`` (the watcher's emit path against a real
nats-server, 10,000 changes, one process): 793 collections costing 273-345 ms of CPU and
81-88 µs per change with the defaults (three runs), 42 collections, 50 ms and 72 µs per change
with these. In the 1,000-CR burst (``python -m bench.ab``, bench/results/ab-gc-tuning.md) the
pipeline's processes spent 0.94 of the CPU, within that run's noise. Memory: garbage in cycles
waits for up to 10,000 allocations instead of 700; what the services make in cycles is small
(asyncio's tasks and exceptions), large bodies are freed by reference counting, and the
burst's peak RSS did not move (watcher 64 MB, status 69-72 MB, each reconciler 63 MB).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
OLDER_THRESHOLDS = (10, 10)


def tune() -> None:
    """Freeze what start-up made and widen the young generation (call once, before serving)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
