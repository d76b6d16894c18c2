"""What the pipeline reads from a Pod: whether it counts as a ready member of its Memcached."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Ready=True and not being deleted. A terminating pod may still report Ready until its
    containers stop, but it is no longer a member a client should connect to."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )
