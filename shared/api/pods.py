"""What the pipeline reads from a Pod: whether it counts as a ready member of its Memcached,
and the address a client reaches it at."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from memcached_operator.shared.api.contract import MEMCACHED_PORT


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Ready=True and not being deleted. A terminating pod may still report Ready until its
    containers stop, but it is no longer a member a client should connect to."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def valid_ip(text: object) -> str:
    """``text`` in canonical form if it is an IPv4 or IPv6 address, else ''. Anything read
    from a pod (or from a header claiming to be from one) goes through this before it becomes
    part of a status: an address is bounded and has one spelling."""
    if not isinstance(text, str) or len(text) > 45:
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


def pod_ip(pod: Mapping[str, Any]) -> str:
    """The pod's primary IP (status.podIP), or '' when it has none yet or it is not an IP."""
    return valid_ip((pod.get("status") or {}).get("podIP"))


def endpoint(ip: str) -> str:
    """``host:port`` of memcached at ``ip`` (IPv6 in brackets), as clients take a server."""
    return f"[{ip}]:{MEMCACHED_PORT}" if ":" in ip else f"{ip}:{MEMCACHED_PORT}"
