"""The objects a Memcached owns beside its Deployment: its PodDisruptionBudget and Service.

Pure functions of the same shape as ``desired.py``: the server-side-apply body of each, or
None when the CR should not have one (a PodDisruptionBudget below two replicas, where
allowing one disruption would allow all of them). Both are named after the CR, labelled
managed-by this operator (so the watcher streams them) and controlled by the CR (so the
garbage collector removes them with it). ``matches`` and ``owned_by`` of ``desired.py`` apply
to them unchanged.
"""

from __future__ import annotations

from typing import Any

from memcached_operator.shared.api.contract import (
    MEMCACHED_PORT as PORT,
)
from memcached_operator.shared.api.contract import (
    OWNER_ANNOTATION,
    labels,
    owner_reference,
)
from memcached_operator.shared.api.models import Memcached

# A PodDisruptionBudget protects a pool of at least this many pods.
PDB_MIN_SIZE = 2
# The port's name in the Service: memcached's IANA service name, which SRV lookups use
# (_memcache._tcp.<name>.<namespace>.svc).
PORT_NAME = "memcache"


def _metadata(cr: Memcached, uid: str) -> dict[str, Any]:
    return {
        "name": cr.name,
        "namespace": cr.namespace,
        "labels": labels(cr),
        "annotations": {OWNER_ANNOTATION: cr.name},
        "ownerReferences": [owner_reference(cr, cr_uid=uid)],
    }


def _uid(cr: Memcached, cr_uid: str | None) -> str:
    uid = cr_uid or cr.uid
    if not uid:
        raise ValueError(f"Memcached {cr.key()} has no metadata.uid to own its objects by")
    return uid


def desired_pdb(cr: Memcached, *, cr_uid: str | None = None) -> dict[str, Any] | None:
    """The policy/v1 PodDisruptionBudget for ``cr``: one pod evicted at a time, when the CR
    has at least two pods; None below that (an existing one is then deleted)."""
    if cr.spec.size < PDB_MIN_SIZE:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(cr, _uid(cr, cr_uid)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(cr)}},
    }


def desired_service(cr: Memcached, *, cr_uid: str | None = None) -> dict[str, Any]:
    """The headless v1 Service for ``cr``: no cluster IP, so ``<name>.<namespace>.svc``
    resolves to the address of every ready pod, one A record each — the pool a memcached
    client shards keys over (a load-balancing virtual IP would defeat the client's
    hashing)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(cr, _uid(cr, cr_uid)),
        "spec": {
            "clusterIP": "None",
            "type": "ClusterIP",
            "selector": labels(cr),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT, "protocol": "TCP"}],
        },
    }
