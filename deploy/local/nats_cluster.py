"""The local NATS cluster seen from outside: its nodes, the JetStream leaders, who is where.

`cluster status` prints each node and, per stream, its leader and replicas (what `nats stream
report` shows); the e2e tests, the chaos runner and the benchmarks use the same calls to find
the node a service is connected to, the meta-leader or a stream's leader, and to kill, stop or
restart one node. Everything is read from the nodes' monitoring ports (``/jsz``, ``/connz``),
which need no credentials, so a lost quorum still shows which nodes are up.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from deploy.local import nats as local_nats
from deploy.local.layout import Layout
from deploy.local.processes import Record, Supervisor


@dataclass(frozen=True)
class StreamPlacement:
    """Where one stream lives: its leader's server name and the other replicas'."""

    stream: str
    leader: str
    replicas: list[str] = field(default_factory=list)
    # Replica name -> whether it is current (caught up with the leader).
    current: dict[str, bool] = field(default_factory=dict)


def _monitor(port: int, path: str, *, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return data if isinstance(data, dict) else None


def node_of(server_name: str) -> int | None:
    """The node index of a server name of this layout ("mcop-local-2" -> 2)."""
    for node in range(32):
        if server_name == local_nats.server_name(node):
            return node
    return 0 if server_name == local_nats.server_name(None) else None


class NatsCluster:
    """The NATS nodes of one local instance, by index (node 0 is the single server)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.supervisor = Supervisor(layout.state_dir)

    @property
    def nodes(self) -> range:
        return range(self.layout.nats_nodes)

    def record(self, node: int) -> Record | None:
        return self.supervisor.running(local_nats.node_name(node))

    def running(self, node: int) -> bool:
        return self.record(node) is not None

    def _jsz(self, node: int, query: str = "") -> dict[str, Any] | None:
        return _monitor(self.layout.nats_node_ports(node)[1], f"/jsz{query}")

    def meta_leader(self) -> int | None:
        """The node that is the JetStream meta-leader, as a running node reports it."""
        for node in self.nodes:
            jsz = self._jsz(node) if self.running(node) else None
            leader = ((jsz or {}).get("meta_cluster") or {}).get("leader")
            if leader:
                return node_of(str(leader))
        return None

    def streams(self) -> dict[str, StreamPlacement]:
        """Every stream's placement as its leader reports it (a follower's view of the other
        replicas, or of who leads after a change, can be stale), else as any node does."""
        found: dict[str, StreamPlacement] = {}
        for node in self.nodes:
            jsz = self._jsz(node, "?accounts=true&streams=true") if self.running(node) else None
            if jsz is None:
                continue
            # A node lists the other replicas; it is one itself, current as far as it knows.
            here = local_nats.server_name(node if self.layout.nats_nodes > 1 else None)
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    cluster = detail.get("cluster") or {}
                    leader = str(cluster.get("leader") or "")
                    if detail["name"] in found and leader != here:
                        continue
                    current = {here: True}
                    current |= {
                        str(r.get("name")): bool(r.get("current"))
                        for r in cluster.get("replicas") or []
                    }
                    found[detail["name"]] = StreamPlacement(
                        detail["name"], leader, sorted(current), current
                    )
        return found

    def leader_of(self, stream: str) -> int | None:
        """The node that leads ``stream`` now (None when no running node knows one)."""
        placement = self.streams().get(stream)
        return node_of(placement.leader) if placement and placement.leader else None

    def node_of_client(self, user: str) -> list[int]:
        """The nodes that the connections of NATS user ``user`` are on now."""
        found = []
        for node in self.nodes:
            if not self.running(node):
                continue
            port = self.layout.nats_node_ports(node)[1]
            connz = _monitor(port, "/connz?auth=true&limit=4096") or {}
            if any(c.get("authorized_user") == user for c in connz.get("connections") or []):
                found.append(node)
        return found

    # -- faults ---------------------------------------------------------------------------------

    def kill(self, node: int) -> None:
        """SIGKILL node ``node`` (its store stays: a restart recovers from it)."""
        self.supervisor.kill(local_nats.node_name(node))

    def signal(self, node: int, sig: signal.Signals) -> None:
        """Send ``sig`` (e.g. SIGSTOP, SIGCONT: a hung node) to node ``node``."""
        rec = self.record(node)
        if rec is not None:
            os.kill(rec.pid, sig)

    def start(self, node: int, *, wait: bool = True) -> None:
        """Start node ``node`` again with its configuration (a no-op while it runs)."""
        if self.layout.nats_nodes <= 1:
            local_nats.start(
                self.supervisor,
                port=self.layout.nats_port,
                monitor_port=self.layout.nats_monitor_port,
                wait=wait,
            )
            return
        client, monitor, _ = self.layout.nats_node_ports(node)
        peers = local_nats.Peers(node, tuple(route for _, _, route in self.layout.nats_ports))
        local_nats.start(self.supervisor, port=client, monitor_port=monitor, peers=peers, wait=wait)

    def healthy(self, node: int) -> bool:
        """Whether node ``node`` says it is healthy, JetStream included (its ``/healthz``)."""
        port = self.layout.nats_node_ports(node)[1]
        return (_monitor(port, "/healthz") or {}).get("status") == "ok"

    def describe(self) -> list[str]:
        """Lines for `cluster status`: each node, then each stream's leader and replicas."""
        meta = self.meta_leader()
        lines = []
        for node in self.nodes:
            client, monitor, route = self.layout.nats_node_ports(node)
            rec = self.record(node)
            name = local_nats.server_name(node if self.layout.nats_nodes > 1 else None)
            state = "running" if rec else "stopped"
            role = " meta-leader" if meta == node and self.layout.nats_nodes > 1 else ""
            lines.append(
                f"nats node {node} {name:<14} {state:<8} client={client} monitor={monitor} "
                f"route={route} pid={rec.pid if rec else '-'}{role}"
            )
        for name, placement in sorted(self.streams().items()):
            replicas = ", ".join(
                f"{r}{'' if placement.current.get(r) else ' (behind)'}" for r in placement.replicas
            )
            leader = placement.leader or "none"
            lines.append(f"stream {name:<22} leader={leader:<14} replicas=[{replicas}]")
        return lines
