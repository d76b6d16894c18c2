"""Which of a Memcached's pods are its nodes, and their endpoints: the status's pod lists.

A pod counts only when it carries the owner annotation naming the CR (every pod of the
reconciler's template does), is Ready and is not being deleted; the status service reads the
pods from its index of the stream's pod events (pod_index.py) and passes these to the fold.
"""

from __future__ import annotations

from typing import Any

from memcached_operator.shared.api.contract import OWNER_ANNOTATION
from memcached_operator.shared.api.pods import endpoint, pod_ip, pod_ready


def ready_endpoints(cr: dict[str, Any], pods: list[dict[str, Any]]) -> list[str]:
    """Sorted ``host:port`` of the pods :func:`ready_nodes` names that have an IP."""
    names = set(ready_nodes(cr, pods))
    ips = (pod_ip(pod) for pod in pods if (pod.get("metadata") or {}).get("name") in names)
    return sorted({endpoint(ip) for ip in ips if ip})


def ready_nodes(cr: dict[str, Any], pods: list[dict[str, Any]]) -> list[str]:
    """Sorted names of the CR's pods that are Ready and not being deleted.

    A pod counts only when it carries the owner annotation naming this CR (every pod of our
    template does), so pods a label selector happens to catch from elsewhere are left out.
    """
    metadata = cr.get("metadata") or {}
    name, namespace = metadata.get("name"), metadata.get("namespace")
    nodes: set[str] = set()
    for pod in pods:
        pod_meta = pod.get("metadata") or {}
        if (pod_meta.get("annotations") or {}).get(OWNER_ANNOTATION) != name:
            continue
        if namespace and pod_meta.get("namespace") not in (None, namespace):
            continue
        if not pod_ready(pod):
            continue
        if isinstance(pod_meta.get("name"), str):
            nodes.add(pod_meta["name"])
    return sorted(nodes)
