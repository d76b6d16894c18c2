"""The contract between the services and the objects they share: how the operator marks what it
owns, and the names every service must agree on.

The reconciler writes these labels, the owner annotation and the controller reference with its
field manager; the watcher recognises our own writes and maps a pod back to its Memcached by
them; the status service selects pods by them. Kept here, beside the API models, so that no
service has to import another to agree with it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from memcached_operator.shared.api.models import API_VERSION, KIND, Memcached
from memcached_operator.shared.workqueue.controller import RECONCILE_CONTROLLER, STATUS_CONTROLLER

# memcached's port in every pod of a Memcached (and of its headless Service).
MEMCACHED_PORT = 11211

MANAGED_BY = "memcached-operator"
# The field manager of the reconciler's server-side applies; the watcher recognises the
# Deployment changes our own applies made by it.
FIELD_MANAGER = "memcached-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"

# The owning CR's full name on the Deployment and its pods: the instance label may be a
# shortened hash of a long name, and pods are owned by a ReplicaSet, so this is how the watcher
# maps a pod back to its Memcached without another API call.
OWNER_ANNOTATION = "cache.example.com/memcached"

# The pipeline's controllers, by the name their requests, outcomes, leases and metrics carry
# (mcop.requests.<controller>.…, mcop.outcomes.<controller>.…): the names of their Controller
# values, which derive every other name they go by.
RECONCILE = RECONCILE_CONTROLLER.name
STATUS = STATUS_CONTROLLER.name

# The condition types of a Memcached's status (the status service sets them; the watcher's
# resync reads Degraded).
AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_TYPES = (AVAILABLE, PROGRESSING, DEGRADED)

_LABEL_VALUE_MAX = 63
_HASH_LENGTH = 8
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_NOT_LABEL_CHAR = re.compile(r"[^-A-Za-z0-9_.]")


def label_value(text: str) -> str:
    """A valid label value for ``text``: itself when it is one, otherwise a stable stand-in.

    The stand-in is a readable prefix plus a hash of the whole text, so two long CR names
    sharing their first 54 characters still get distinct selectors, and the same name always
    gets the same one (a Deployment's selector cannot change).
    """
    if len(text) <= _LABEL_VALUE_MAX and _LABEL_VALUE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_LENGTH]
    prefix = _NOT_LABEL_CHAR.sub("-", text)[: _LABEL_VALUE_MAX - _HASH_LENGTH - 1]
    # A label value must start and end alphanumeric; the hash supplies the end.
    prefix = prefix.strip("-_.")
    return f"{prefix}-{digest}" if prefix else digest


def labels(cr: Memcached) -> dict[str, str]:
    """Labels of the Deployment and its pods; also the Deployment's selector."""
    return {
        LABEL_NAME: "memcached",
        LABEL_INSTANCE: label_value(cr.name),
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def owner_reference(cr: Memcached, *, cr_uid: str) -> dict[str, Any]:
    """The controller reference that ties the Deployment's lifetime to the CR."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": cr.name,
        "uid": cr_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(live: dict[str, Any], cr_uid: str) -> bool:
    """Whether the controller owner of ``live`` is the CR with uid ``cr_uid``."""
    references = live.get("metadata", {}).get("ownerReferences") or []
    return any(
        reference.get("controller") is True and reference.get("uid") == cr_uid
        for reference in references
    )
