"""Which Memcacheds the periodic resync leaves alone: those dead-lettered at their generation.

A request the reconcilers gave up on (it crashed them, or failed ``max_deliveries`` times)
is reported on the CR as ``Degraded=True``, reason ``DeadLettered``, with the generation it
was for. Re-requesting such a CR every resync period would run the same failure again (and,
for a request that crashes its worker, take workers down again) every period, for ever. So
the watcher keeps the keys of CRs whose status says so for their current generation, and the
resync skips them. Only the resync does: a spec change (a new generation) is requested by
the watcher as usual, and from then on the mark no longer applies, as it is for the old
generation; so is a change to the CR's Deployment. Only the marked keys are kept, so healthy
CRs cost nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memcached_operator.shared.api.contract import DEGRADED
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events.outcomes import DEAD_LETTERED


def dead_lettered(cr: Mapping[str, Any]) -> bool:
    """Whether ``cr``'s status says its current generation's request was dead-lettered."""
    generation = (cr.get("metadata") or {}).get("generation")
    for condition in (cr.get("status") or {}).get("conditions") or []:
        if (
            isinstance(condition, dict)
            and condition.get("type") == DEGRADED
            and condition.get("status") == "True"
            and condition.get("reason") == DEAD_LETTERED
        ):
            # A condition without observedGeneration cannot say which spec it is about.
            observed = condition.get("observedGeneration")
            return isinstance(observed, int) and observed == generation
    return False


class DeadLettered:
    """The keys of the CRs the resync skips, kept up to date from every CR the watcher sees."""

    def __init__(self) -> None:
        self._keys: set[ObjectKey] = set()

    def observe(self, cr: Mapping[str, Any], *, deleted: bool = False) -> None:
        meta = cr.get("metadata") or {}
        key = ObjectKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if not deleted and dead_lettered(cr):
            self._keys.add(key)
        else:
            self._keys.discard(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
