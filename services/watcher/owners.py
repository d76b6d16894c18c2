"""Whose change it is: the Memcached a watched Deployment, Service, PDB or Pod belongs to.

Watched objects are written by tenants, so nothing they say about their owner is believed
unchecked (:func:`find_owner`): a Deployment's (or another applied object's) owner is its
controller reference to a Memcached, a Pod's is the owner annotation the reconciler puts in the
pod template, believed only if the pod's controller is the ReplicaSet the Deployment controller
named after that Memcached's Deployment. Names must be Kubernetes names; a claim that is not
believed is counted and logged with a reason (:func:`believed_owner`) and never becomes a
subject, so it wakes nobody (shared/bus/routing.py routes to owners only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from memcached_operator.shared.api.contract import OWNER_ANNOTATION
from memcached_operator.shared.api.models import GROUP, KIND
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.subjects import ObjectKey

log = logging.getLogger("memcached_operator.watcher")

OWNER_REJECTED = Counter(
    "mcop_watcher_owner_rejected_total",
    "Changes of Deployments and Pods whose claimed owning Memcached was not believed (no "
    "request was sent for it), by reason",
    ["kind", "reason"],
)

# The Deployment controller's label on the pods of one ReplicaSet, whose name it ends.
POD_TEMPLATE_HASH = "pod-template-hash"
MAX_NAME_LENGTH = 253  # a DNS subdomain, as object names are

# Why a claimed owner is not believed (label of mcop_watcher_owner_rejected_total).
INVALID_NAMESPACE = "InvalidNamespace"
INVALID_OWNER_NAME = "InvalidOwnerName"
OWNER_MISMATCH = "OwnerMismatch"
NO_CONTROLLER = "NoController"


@dataclass(frozen=True)
class Kind:
    """A watched kind: its subject token, and whether its objects belong to a Memcached (then
    their owner is found, named in their events, and is what their changes are routed to)."""

    name: str  # subject token and event type segment: memcached, deployment, pod
    owned: bool


@dataclass(frozen=True)
class Owner:
    """The Memcached an owned object belongs to, as far as it can be believed: ``key`` None
    and ``rejected`` a reason when the object claims an owner that it cannot have."""

    key: ObjectKey | None
    rejected: str = ""
    detail: str = ""


def _controller_reference(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = meta.get("ownerReferences")
    for ref in refs if isinstance(refs, list) else []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return ref
    return None


def _group(api_version: object) -> str:
    text = str(api_version or "")
    return text.rpartition("/")[0] if "/" in text else ""


# The kinds the reconciler applies, each controlled by its Memcached directly.
CONTROLLED_BY_CR = frozenset({"deployment", "pdb", "service"})


def replica_set_name(deployment: str, template_hash: str) -> str:
    """The name the Deployment controller gives a Deployment's ReplicaSet: the Deployment's
    name cut to fit 253 characters with ``-<pod-template-hash>`` (generateReplicaSetName in
    kubernetes/pkg/controller/deployment/sync.go)."""
    room = MAX_NAME_LENGTH - 1 - len(template_hash)
    if len(deployment) > room > 0:
        deployment = deployment[:room]
    return f"{deployment}-{template_hash}"


def find_owner(kind: str, obj: Mapping[str, Any]) -> Owner:
    """The owning Memcached of a Deployment (``kind`` "deployment"), another object the
    reconciler applies (CONTROLLED_BY_CR) or a Pod ("pod").

    A Deployment's owner is its controller reference to a Memcached (same namespace, by
    definition of owner references); the reconciler's owner annotation, when present, must
    name the same CR. A Pod's controller is a ReplicaSet, so its owner is the annotation the
    reconciler puts in the pod template, believed only if the pod's controller is the
    ReplicaSet the Deployment controller named after the Deployment (:func:`replica_set_name`;
    the Deployment is named after the CR). Anything else an object says about its owner, in a
    namespace anyone may write to, is rejected with a reason and never becomes a subject.
    """
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    claimed = annotations.get(OWNER_ANNOTATION) if isinstance(annotations, Mapping) else None
    controller = _controller_reference(meta)
    if claimed is None and controller is None:
        return Owner(None)  # claims nothing (or a deletion stub): nobody to ask
    namespace = meta.get("namespace")
    if not isinstance(namespace, str) or not subjects.is_namespace(namespace):
        return Owner(None, INVALID_NAMESPACE, f"namespace {subjects.shown(str(namespace))}")
    if claimed is not None and not (isinstance(claimed, str) and subjects.is_object_name(claimed)):
        return Owner(
            None,
            INVALID_OWNER_NAME,
            f"annotation {OWNER_ANNOTATION} is not an object name: {subjects.shown(str(claimed))}",
        )
    if controller is None:
        return Owner(None, NO_CONTROLLER, f"annotation {OWNER_ANNOTATION} without a controller")
    ref_kind = str(controller.get("kind") or "")
    ref_name = controller.get("name")
    ref_group = _group(controller.get("apiVersion"))
    if not isinstance(ref_name, str) or not subjects.is_object_name(ref_name):
        return Owner(None, INVALID_OWNER_NAME, f"controller name {subjects.shown(str(ref_name))}")
    if kind in CONTROLLED_BY_CR and (ref_kind, ref_group) == (KIND, GROUP):
        if claimed is not None and claimed != ref_name:
            return Owner(
                None,
                OWNER_MISMATCH,
                f"annotation {OWNER_ANNOTATION} names {subjects.shown(claimed)}, "
                f"the controller {subjects.shown(ref_name)}",
            )
        return Owner(ObjectKey(namespace, ref_name))
    if kind == "pod" and (ref_kind, ref_group) == ("ReplicaSet", "apps") and claimed is not None:
        labels = meta.get("labels") or {}
        template_hash = labels.get(POD_TEMPLATE_HASH) if isinstance(labels, Mapping) else None
        if not template_hash or ref_name != replica_set_name(claimed, str(template_hash)):
            return Owner(
                None,
                OWNER_MISMATCH,
                f"annotation {OWNER_ANNOTATION} names {subjects.shown(claimed)}, "
                f"the controller is ReplicaSet {subjects.shown(ref_name)}",
            )
        return Owner(ObjectKey(namespace, claimed))
    return Owner(
        None,
        NO_CONTROLLER,
        f"controlled by {subjects.shown(ref_kind)} {subjects.shown(ref_name)}, not a Memcached",
    )


def believed_owner(kind: Kind, obj: Mapping[str, Any]) -> Owner:
    """The object's owner (see :func:`find_owner`); a rejected claim is counted and logged."""
    if not kind.owned:
        return Owner(None)
    owner = find_owner(kind.name, obj)
    if owner.rejected:
        OWNER_REJECTED.labels(kind.name, owner.rejected).inc()
        meta = obj.get("metadata") or {}
        log.warning(
            "ignoring the owner %s %s/%s claims: %s: %s",
            kind.name,
            subjects.shown(str(meta.get("namespace") or "")),
            subjects.shown(str(meta.get("name") or "")),
            owner.rejected,
            owner.detail,
        )
    return owner
