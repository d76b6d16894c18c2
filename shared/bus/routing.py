"""Which change wakes which controller: the For/Owns/Watches declarations and their router.

The model is controller-runtime's builder: each controller says, beside its handler, which
kinds it watches and with which predicates (``For(Memcached)``, ``Owns(Deployment)``,
``Watches(Pod -> its owner)``), and the manager routes every observed change by those
declarations. Here the watcher observes and routes; the controllers run in other processes, so
a route ends as a request message ``mcop.requests.<controller>.<ns>.<name>`` (shared/bus/
subjects.py) instead of a call into an in-process work queue.

- :func:`For` requests the changed object itself (a Memcached for the reconciler);
- :func:`Owns` requests the Memcached that controls the changed object (its controller
  reference), :func:`Watches` the Memcached it is mapped to otherwise (a Pod, through its
  ReplicaSet and the owner annotation). The watcher finds that owner, checking what a tenant's
  object claims (services/watcher/owners.py); a change whose owner is not believed wakes nobody.
- A predicate (:data:`Predicate`) filters the changes of one declaration. Like
  controller-runtime's, it may keep what it saw of each object (the watcher sees each change
  once, without the object's old version), so every predicate of a declaration sees every
  change of its kind, and a declaration routes a change only if all of them let it through.
  Declarations are built per router (a function per controller), so their memory is the
  router's.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from memcached_operator.shared.bus.subjects import ObjectKey

MODIFIED = "modified"
DELETED = "deleted"


@dataclass(frozen=True)
class Change:
    """One observed change of a watched object, as a predicate sees it."""

    kind: str  # the subject token of the object's kind: memcached, deployment, pod, pdb, service
    change: str  # added, modified or deleted
    key: ObjectKey  # the changed object
    owner: ObjectKey | None  # its owning Memcached as the watcher believes it, or None
    obj: Mapping[str, Any]

    @property
    def deleted(self) -> bool:
        return self.change == DELETED


Predicate = Callable[[Change], bool]


class Target(enum.Enum):
    """Which object a routed change asks to be reconciled."""

    SELF = "self"  # For: the changed object
    OWNER = "owner"  # Owns, Watches: the Memcached it belongs to


@dataclass(frozen=True)
class Watch:
    """One declaration: ``controller`` wants a request about ``target`` when an object of
    ``kind`` changes and every predicate lets the change through."""

    controller: str
    kind: str
    target: Target
    predicates: tuple[Predicate, ...] = ()


def For(controller: str, kind: str, *predicates: Predicate) -> Watch:
    """The controller's own kind: a change requests the object itself."""
    return Watch(controller, kind, Target.SELF, predicates)


def Owns(controller: str, kind: str, *predicates: Predicate) -> Watch:
    """A kind the controller's objects control: a change requests its controlling Memcached."""
    return Watch(controller, kind, Target.OWNER, predicates)


def Watches(controller: str, kind: str, *predicates: Predicate) -> Watch:
    """A kind mapped to a Memcached some other way (a Pod: see the watcher's owners.py)."""
    return Watch(controller, kind, Target.OWNER, predicates)


class Router:
    """The requests each change makes, by the declarations of every controller, in their
    order (so a change that wakes two controllers requests them in the order declared)."""

    def __init__(self, watches: Iterable[Watch]) -> None:
        self.watches = tuple(watches)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(watch.kind for watch in self.watches)

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(watch.controller for watch in self.watches))

    def requests(self, change: Change) -> list[tuple[str, ObjectKey]]:
        """(controller, key) of each request ``change`` makes."""
        out: list[tuple[str, ObjectKey]] = []
        for watch in self.watches:
            if watch.kind != change.kind:
                continue
            target = change.key if watch.target is Target.SELF else change.owner
            if target is None:
                continue  # nobody to ask, and nothing for the predicates to remember
            # Every predicate sees the change (no short cut): those that remember stay current.
            passed = [predicate(change) for predicate in watch.predicates]
            if all(passed):
                out.append((watch.controller, target))
        return out


class Changed:
    """Lets a change through if it can alter what ``fingerprint`` reads of the object: a
    creation, a deletion, or an update whose fingerprint differs from the last one seen (or
    whose object was not seen before). Only a hash of each object's fingerprint is kept."""

    def __init__(self, fingerprint: Callable[[Mapping[str, Any]], Hashable]) -> None:
        self.fingerprint = fingerprint
        self._seen: dict[ObjectKey, int] = {}

    def __call__(self, change: Change) -> bool:
        if change.deleted:
            self._seen.pop(change.key, None)
            return True
        fingerprint = hash(self.fingerprint(change.obj))
        previous = self._seen.get(change.key)
        self._seen[change.key] = fingerprint
        return change.change != MODIFIED or previous != fingerprint


def generation(obj: Mapping[str, Any]) -> int:
    """metadata.generation: status writes and metadata-only edits keep it, spec edits move it
    (what controller-runtime's GenerationChangedPredicate relies on)."""
    return int((obj.get("metadata") or {}).get("generation") or 0)


def spec_and_labels(obj: Mapping[str, Any]) -> str:
    """What stands in for metadata.generation of a kind without one (a Service): its spec and
    labels, so that their drift is noticed and nothing else is."""
    meta = obj.get("metadata") or {}
    return json.dumps([obj.get("spec"), meta.get("labels")], sort_keys=True, default=str)


def GenerationChanged() -> Changed:
    """controller-runtime's GenerationChangedPredicate, for the router's memory."""
    return Changed(generation)
