"""What wakes the reconciler: a Memcached's spec change, drift or deletion of what it applies.

Declared here, beside the handler (reconcile.py), as controller-runtime's builder would:

- ``For(Memcached)`` when the generation changed: a creation, a deletion, or a spec edit. The
  CR's own status writes (and metadata-only edits) keep the generation, so the status service's
  writes do not wake the reconciler again.
- ``Owns(Deployment)``, ``Owns(PodDisruptionBudget)``, ``Owns(Service)`` when the object's spec
  changed (its generation; a Service has none, so its spec and labels) by anyone but the
  reconciler itself, or when it was deleted. A creation or new generation that the
  reconciler's own apply made needs no reconcile: it is the result of one. Anyone else's edit
  (drift) and any deletion do. Their status (the Deployment's rollout, the disruption
  controller's counts) never does.

The watcher routes by these (shared/bus/routing.py); the package root hands them to it
(memcached_operator.routes), so the watcher never imports this service.
"""

from __future__ import annotations

from memcached_operator.shared.api.contract import FIELD_MANAGER, RECONCILE
from memcached_operator.shared.bus.routing import (
    Change,
    Changed,
    For,
    GenerationChanged,
    Owns,
    Watch,
    spec_and_labels,
)
from memcached_operator.shared.events.codec import last_spec_writer


def not_our_own_apply(change: Change) -> bool:
    """False for a creation or update whose newest spec write is the reconciler's own apply."""
    return change.deleted or last_spec_writer(change.obj) != FIELD_MANAGER


def watches() -> tuple[Watch, ...]:
    """The reconciler's declarations, with fresh predicate memory (one set per router)."""
    return (
        For(RECONCILE, "memcached", GenerationChanged()),
        Owns(RECONCILE, "deployment", GenerationChanged(), not_our_own_apply),
        Owns(RECONCILE, "pdb", GenerationChanged(), not_our_own_apply),
        Owns(RECONCILE, "service", Changed(spec_and_labels), not_our_own_apply),
    )
