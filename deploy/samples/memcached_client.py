"""Using a Memcached from an application: the pool of servers a client shards keys over.

Two ways to find it, both without the operator's code: the CR's ``status.endpoints`` (one
``host:port`` per ready pod), or the headless Service of the CR's name, whose DNS name
resolves to the same pod addresses inside the cluster. Pass the list to any client that hashes
keys over servers, e.g. ``pymemcache.client.hash.HashClient(servers_from_status(mc))``.
"""

from __future__ import annotations

import socket
from typing import Any

PORT = 11211


def servers_from_status(memcached: dict[str, Any]) -> list[tuple[str, int]]:
    """(host, port) of each ready pod, from a Memcached as ``kubectl get mc -o json`` or the
    API returns it; IPv6 hosts come without their brackets."""
    servers = []
    for endpoint in (memcached.get("status") or {}).get("endpoints") or []:
        host, _, port = str(endpoint).rpartition(":")
        servers.append((host.strip("[]"), int(port)))
    return servers


def servers_from_dns(name: str, namespace: str) -> list[tuple[str, int]]:
    """(address, port) of each ready pod, from the headless Service's A/AAAA records (works
    from inside the cluster, where ``<name>.<namespace>.svc`` resolves)."""
    infos = socket.getaddrinfo(f"{name}.{namespace}.svc", PORT, type=socket.SOCK_STREAM)
    return sorted({(str(info[4][0]), PORT) for info in infos})
