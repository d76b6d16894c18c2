"""What wakes the status service: the changes of a Memcached's Deployment and pods it folds.

Declared here, beside the fold (conditions.py), as controller-runtime's builder would:

- ``Owns(Deployment)`` when anything the status is folded from changed
  (deployment_view.deployment_inputs): not for the Deployment controller's revision
  annotation, nor a condition's lastUpdateTime alone. A deletion always does.
- ``Watches(Pod -> its Memcached)`` when the pod's readiness changed (ready pods are status,
  not desired state; an unready pod seen for the first time changes nothing, as the
  Deployment's own events carry its counts), and only when the owner's Deployment has already
  counted the ready pods: while its readyReplicas differs from the ready pods seen, the
  Deployment controller's own update is still to come, and that update's request brings the
  pods and the counts in one refresh (:class:`ReadyPods`).

The reconciler asks for a refresh after each outcome itself (reconcile.py); the watcher routes
these (shared/bus/routing.py), handed to it by the package root (memcached_operator.routes), so
it never imports this service.
"""

from __future__ import annotations

from memcached_operator.shared.api.contract import STATUS
from memcached_operator.shared.api.pods import pod_ready
from memcached_operator.shared.bus.routing import Change, Changed, Owns, Watch, Watches
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.status.deployment_view import deployment_inputs


class ReadyPods:
    """Per Memcached: the ready pods seen, and the readyReplicas its Deployment last reported;
    one memory for the two declarations below (a pod's request waits on its Deployment's)."""

    def __init__(self) -> None:
        self._ready: dict[ObjectKey, bool] = {}  # per pod
        self._ready_pods: dict[ObjectKey, int] = {}  # per owner
        self._counted: dict[ObjectKey, int] = {}  # per owner

    def deployment_counts(self, change: Change) -> bool:
        """Remembers the ready replicas the owner's Deployment reports; lets every change
        through (the Deployment's own predicate is :func:`deployment_inputs`)."""
        assert change.owner is not None  # the router asks only about owned objects
        if change.deleted:
            self._counted.pop(change.owner, None)
        else:
            status = change.obj.get("status") or {}
            self._counted[change.owner] = int(status.get("readyReplicas") or 0)
        return True

    def readiness_changed(self, change: Change) -> bool:
        """Whether the pod's readiness changed: it became ready or unready, went away, or is
        seen ready for the first time."""
        assert change.owner is not None
        ready = pod_ready(change.obj) and not change.deleted
        previous = self._ready.get(change.key)
        delta = int(ready) - int(bool(previous))
        if delta:
            count = self._ready_pods.get(change.owner, 0) + delta
            if count > 0:
                self._ready_pods[change.owner] = count
            else:
                self._ready_pods.pop(change.owner, None)
        if change.deleted:
            self._ready.pop(change.key, None)
            return True
        self._ready[change.key] = ready
        # An unready pod seen for the first time changes no status (the Deployment's own
        # events carry its counts); a ready one, or a flip, does.
        return ready if previous is None else previous != ready

    def counted_by_deployment(self, change: Change) -> bool:
        """Whether the owner's Deployment reports as many ready replicas as there are ready
        pods (or is not known here: then ask rather than guess)."""
        assert change.owner is not None
        counted = self._counted.get(change.owner)
        return counted is None or counted == self._ready_pods.get(change.owner, 0)


def watches() -> tuple[Watch, ...]:
    """The status service's declarations, with fresh predicate memory (one set per router)."""
    pods = ReadyPods()
    return (
        Owns(STATUS, "deployment", pods.deployment_counts, Changed(deployment_inputs)),
        Watches(STATUS, "pod", pods.readiness_changed, pods.counted_by_deployment),
    )
