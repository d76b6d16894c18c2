"""The Memcached-specific part of the reconciler: the Deployment a Memcached CR should have.

Pure functions only: build the server-side-apply body from the CR, decide whether a live
Deployment already carries every field of that body (so an unchanged object is not rewritten),
and tell whether a live Deployment is controlled by the CR. A second kind of resource would be
one more module of this shape, not a change to the reconcile loop.
"""

from __future__ import annotations

import math
from typing import Any

from memcached_operator.shared.api.contract import (
    MEMCACHED_PORT as PORT,
)
from memcached_operator.shared.api.contract import (
    OWNER_ANNOTATION,
    labels,
    owner_reference,
)
from memcached_operator.shared.api.models import (
    MEBIBYTE,
    MEMORY_MB_MAX,
    Memcached,
    MemcachedSpec,
    parse_quantity,
)

CONTAINER_NAME = "memcached"
EXPORTER_NAME = "memcached-exporter"
EXPORTER_PORT = 9150
# The exporter's own needs are small and fixed: bounded so that it cannot starve memcached.
EXPORTER_RESOURCES = {
    "requests": {"cpu": "10m", "memory": "16Mi"},
    "limits": {"cpu": "100m", "memory": "32Mi"},
}
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(EXPORTER_PORT),
    "prometheus.io/path": "/metrics",
}
# Cache memory without a memory limit or memoryMB: memcached's own default.
DEFAULT_MEMORY_MB = 64
# What a memcached process needs beyond -m (which counts item memory only): connection
# buffers, the hash table (which grows with the item count), threads and the binary. Taken
# from the memory limit when -m is derived from it: 10 %, and at least 16 MiB.
OVERHEAD_FRACTION = 0.1
OVERHEAD_MIN_MB = 16

TOPOLOGY_KEY = "kubernetes.io/hostname"

# The memcache user of the official memcached images (alpine and debian both create it with
# this uid and gid). Pod Security `restricted` needs runAsNonRoot, which the kubelet can only
# check against a numeric user; an image without this user still runs as it (memcached needs no
# home directory or passwd entry).
RUN_AS_USER = 11211


_QUANTITY_MAPS = ("limits", "requests")


def cache_memory_mb(spec: MemcachedSpec) -> int:
    """memcached's -m for ``spec``: memoryMB if set (admission keeps it within the limit);
    otherwise the memory limit less the overhead, or 64 without a limit.

    A derived value is raised to twice the item size, the least memcached starts with (so a
    tiny limit gives a cache that may outgrow it, as -m=64 always could before), and capped at
    MEMORY_MB_MAX, so a limit of exabytes cannot reach memcached as an absurd -m.
    """
    if spec.memory_mb is not None:
        return spec.memory_mb
    limit = (spec.resources.limits or {}).get("memory") if spec.resources else None
    if limit is None:
        derived = DEFAULT_MEMORY_MB
    else:
        limit_mb = math.floor(parse_quantity(limit) / MEBIBYTE)
        derived = limit_mb - max(OVERHEAD_MIN_MB, math.ceil(limit_mb * OVERHEAD_FRACTION))
    least = math.ceil(2 * spec.max_item_size / MEBIBYTE)
    return min(max(derived, least), MEMORY_MB_MAX)


def memcached_command(spec: MemcachedSpec) -> list[str]:
    """The memcached command line: every value from a bounded, validated spec field, never
    free-form text. Options and values are separate arguments: memcached's getopt reads
    "-m=64" as the value "=64", which is 0."""
    return [
        "memcached",
        "-m",
        str(cache_memory_mb(spec)),
        "-c",
        str(spec.max_connections),
        "-I",
        # A multiple of 512 KiB (admission checks it), so always a whole number of KiB.
        f"{spec.max_item_size // 1024}k",
        "-o",
        "modern",
        "-v",
    ]


def pod_security_context() -> dict[str, Any]:
    """The pod's securityContext: non-root, RuntimeDefault seccomp (Pod Security `restricted`)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The memcached container's securityContext: no privilege escalation, no capabilities, a
    read-only root filesystem (memcached keeps everything in memory and writes no files)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def desired_deployment(
    cr: Memcached, *, cr_uid: str | None = None, progress_deadline_seconds: int | None = None
) -> dict[str, Any]:
    """The apps/v1 Deployment for ``cr``, holding only the fields this operator owns.

    ``cr_uid`` defaults to the CR's metadata.uid; raises ValueError when neither is known,
    since an owner reference without a uid would be rejected by the API server.
    """
    uid = cr_uid or cr.uid
    if not uid:
        raise ValueError(f"Memcached {cr.key()} has no metadata.uid to own its Deployment by")
    if not cr.name or not cr.namespace:
        raise ValueError("a Memcached needs metadata.name and metadata.namespace")
    selector = labels(cr)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": cr.spec.image,
        "command": memcached_command(cr.spec),
        # protocol is the server default, but it is a key of the ports list, so naming it
        # keeps server-side apply from depending on that default being filled in first.
        "ports": [{"name": "memcached", "containerPort": PORT, "protocol": "TCP"}],
        # Always present, if empty, so that matches() notices resources removed from the CR.
        "resources": cr.spec.resources.to_api() if cr.spec.resources is not None else {},
        "securityContext": container_security_context(),
    }
    template_annotations = {OWNER_ANNOTATION: cr.name}
    containers = [container]
    if cr.spec.monitoring is not None and cr.spec.monitoring.enabled:
        template_annotations.update(SCRAPE_ANNOTATIONS)
        containers.append(
            {
                "name": EXPORTER_NAME,
                "image": cr.spec.monitoring.image,
                "args": [f"--memcached.address=localhost:{PORT}"],
                "ports": [{"name": "metrics", "containerPort": EXPORTER_PORT, "protocol": "TCP"}],
                "resources": {k: dict(v) for k, v in EXPORTER_RESOURCES.items()},
                "securityContext": container_security_context(),
            }
        )
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": cr.name,
            "namespace": cr.namespace,
            "labels": dict(selector),
            "annotations": {OWNER_ANNOTATION: cr.name},
            "ownerReferences": [owner_reference(cr, cr_uid=uid)],
        },
        "spec": {
            "replicas": cr.spec.size,
            "selector": {"matchLabels": dict(selector)},
            # One cache node down at a time, and never more pods than replicas: each pod that
            # goes empties its share of the cache, so a rollout should cost one share at most.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
            },
            "template": {
                "metadata": {
                    "labels": dict(selector),
                    "annotations": template_annotations,
                },
                "spec": {
                    "containers": containers,
                    # Pods spread over nodes, so one node lost is one share of the cache lost;
                    # ScheduleAnyway: a cluster with fewer nodes than replicas still runs them.
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": TOPOLOGY_KEY,
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": dict(selector)},
                        }
                    ],
                    "securityContext": pod_security_context(),
                    # memcached never talks to the API server: no token in its pods.
                    "automountServiceAccountToken": False,
                },
            },
        },
    }
    if progress_deadline_seconds is not None:
        # How long a rollout may make no progress before the Deployment (and so the CR's
        # Progressing condition) reports ProgressDeadlineExceeded; the API default is 600 s.
        deployment["spec"]["progressDeadlineSeconds"] = progress_deadline_seconds
    return deployment


def _same_quantities(live: Any, desired: dict[str, Any]) -> bool:
    """Exact comparison of one limits or requests map, quantities by value."""
    live = live or {}
    if not isinstance(live, dict) or live.keys() != desired.keys():
        return False
    try:
        # The API server rewrites quantities in canonical form ("67108864" -> "64Mi").
        return all(parse_quantity(live[key]) == parse_quantity(desired[key]) for key in desired)
    except (TypeError, ValueError):
        return False


def _same_resources(live: Any, desired: dict[str, Any]) -> bool:
    # Compared exactly, not as a subset: limits removed from the CR must count as a change,
    # or the Deployment would keep them. Nothing defaults them in a pod template.
    live = live or {}
    if not isinstance(live, dict):
        return False
    return all(_same_quantities(live.get(key), desired.get(key) or {}) for key in _QUANTITY_MAPS)


def _contains(live: Any, desired: Any) -> bool:
    """Whether ``live`` holds every field of ``desired``; extra live fields are defaults."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        for key, value in desired.items():
            if key == "resources" and isinstance(value, dict):
                if not _same_resources(live.get(key), value):
                    return False
            elif not _contains(live.get(key), value):
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(live, list):
            return False
        if all(isinstance(item, dict) for item in desired):
            # Lists of objects (containers, ports, ownerReferences) are merged by key under
            # server-side apply, so other writers' entries beside ours are no difference.
            return all(any(_contains(candidate, item) for candidate in live) for item in desired)
        return len(live) == len(desired) and all(
            _contains(a, b) for a, b in zip(live, desired, strict=True)
        )
    # The type check keeps True from equalling 1.
    return type(live) is type(desired) and live == desired


def _leftovers(live: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether ``live`` still has a container or annotation that only this operator adds and
    ``desired`` no longer has (the exporter of a CR whose monitoring was turned off): other
    writers' extra entries are no difference, but ours must go, and an apply removes them."""
    template = (live.get("spec") or {}).get("template")
    wanted = (desired.get("spec") or {}).get("template")
    if not isinstance(template, dict) or not isinstance(wanted, dict):
        return False
    names = {c.get("name") for c in (template.get("spec") or {}).get("containers") or []}
    wanted_names = {c.get("name") for c in (wanted.get("spec") or {}).get("containers") or []}
    if EXPORTER_NAME in names - wanted_names:
        return True
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    wanted_annotations = (wanted.get("metadata") or {}).get("annotations") or {}
    return any(key in annotations for key in SCRAPE_ANNOTATIONS.keys() - wanted_annotations)


def matches(live: dict[str, Any], desired: dict[str, Any]) -> bool:
    """True when ``live`` already has every field of ``desired``, so applying is a no-op.

    Fields only the live object has (server defaults such as protocol or
    terminationMessagePath, status, managedFields, other writers' labels) are ignored, except
    the exporter container and scrape annotations, which only this operator adds; container
    resources compare exactly, with quantities by value.
    """
    return _contains(live, desired) and not _leftovers(live, desired)
