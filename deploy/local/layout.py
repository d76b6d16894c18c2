"""Where a local instance lives: its state directory, its ports (all from one base port, so a
second instance, the test suite's, runs beside a developer's), its PKI, and the kubeconfigs and
NATS credentials a client of it uses. deploy/local/cluster.py starts the components it names.
"""

from __future__ import annotations

import json
import os
import random
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from deploy.local import nats as local_nats
from memcached_operator.admin import nats_auth, nats_conf, pki

DEFAULT_BASE_PORT = 17400
OPERATOR_NAMESPACE = "memcached-operator"
SERVICES = ("watcher", "reconciler", "status")


def block_size(nats_nodes: int = 1) -> int:
    """How many consecutive ports an instance with ``nats_nodes`` NATS nodes uses: the 8 of a
    one-node instance, and for a cluster a route port for node 0 and client, monitor and
    route ports for each further node, after them (so the first 8 mean what they always did)."""
    return 8 if nats_nodes <= 1 else 9 + 3 * (nats_nodes - 1)


def free_base_port(size: int = 8) -> int:
    """A base port whose `size` consecutive loopback ports are free now, taken below Linux's
    ephemeral range (32768+) so that outgoing connections cannot grab them before `up` binds."""
    for _ in range(200):
        base = random.randrange(10000, 32000 - size)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError("no block of free loopback ports found")


def free_port() -> int:
    """One loopback port free now, below the ephemeral range like :func:`free_base_port`: a port
    the kernel handed out for ``bind(0)`` can be taken by any outgoing connection before the
    server meant for it binds (a test's nats-server once waited 30 s on such a port)."""
    return free_base_port(1)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "memcached-operator" / "local"


class _Port:
    """A port of the instance's block: ``base_port`` plus a fixed offset, read as an attribute."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __get__(self, layout: Layout, owner: type[Layout] | None = None) -> int:
        return layout.base_port + self.offset


@dataclass(frozen=True)
class Layout:
    """Where one instance keeps its files and which ports it uses."""

    state_dir: Path
    base_port: int = DEFAULT_BASE_PORT
    nodes: int = 1
    nats_nodes: int = 1

    # The block of 8 consecutive ports from base_port, in this order (free_base_port's size);
    # a NATS cluster's further ports follow them (nats_node_ports, block_size).
    etcd_port = _Port(0)
    etcd_peer_port = _Port(1)
    apiserver_port = _Port(2)
    controller_manager_port = _Port(3)
    scheduler_port = _Port(4)
    kwok_port = _Port(5)
    nats_port = _Port(6)
    nats_monitor_port = _Port(7)

    def nats_node_ports(self, node: int) -> tuple[int, int, int]:
        """Client, monitor and route port of NATS node ``node`` (0 is the single server's)."""
        if node == 0:
            return self.nats_port, self.nats_monitor_port, self.base_port + 8
        first = self.base_port + 9 + 3 * (node - 1)
        return first, first + 1, first + 2

    @property
    def nats_ports(self) -> list[tuple[int, int, int]]:
        """Every NATS node's client, monitor and route port."""
        return [self.nats_node_ports(node) for node in range(self.nats_nodes)]

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def nats_tls(self) -> bool:
        """Whether this instance's nats-server takes TLS connections only (`up --nats-tls`)."""
        return local_nats.tls_enabled(self.state_dir)

    @property
    def nats_ca(self) -> Path:
        """The CA file a client verifies the TLS nats-server with (env NATS_CA)."""
        return self.pki.ca_cert

    @property
    def nats_url(self) -> str:
        """The URL for people and tests: as the admin user when the server has users."""
        passwords = nats_conf.load_passwords(self.state_dir) or {}
        if "admin" not in passwords:
            return self._nats_address
        secret = urllib.parse.quote(passwords["admin"], safe="")
        urls = []
        for url in self._nats_address.split(","):
            scheme, _, address = url.partition("://")
            urls.append(f"{scheme}://admin:{secret}@{address}")
        return ",".join(urls)

    @property
    def _nats_address(self) -> str:
        """Every node's URL, comma-separated (what NATS_URL takes for a cluster)."""
        scheme = "tls" if self.nats_tls else "nats"
        return ",".join(f"{scheme}://127.0.0.1:{client}" for client, _, _ in self.nats_ports)

    def nats_credentials(self, user: str) -> dict[str, str]:
        """Environment for a process connecting as `user` (watcher, reconciler, status,
        audit, admin): NATS_URL without credentials, NATS_USER and NATS_PASSWORD, and NATS_CA
        when the server takes TLS only."""
        nats_auth.user(user)  # unknown users are an error even before `up`
        passwords = nats_conf.load_passwords(self.state_dir) or {}
        env = {"NATS_URL": self._nats_address}
        if user in passwords:
            env.update(NATS_USER=user, NATS_PASSWORD=passwords[user])
        if self.nats_tls:
            env["NATS_CA"] = str(self.nats_ca)
        return env

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pki(self) -> pki.Pki:
        return pki.Pki(self.state_dir / "pki")

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "layout.json").write_text(
            json.dumps(
                {"base_port": self.base_port, "nodes": self.nodes, "nats_nodes": self.nats_nodes}
            )
        )

    @classmethod
    def load(
        cls,
        state_dir: Path,
        *,
        base_port: int | None = None,
        nodes: int = 1,
        nats_nodes: int = 1,
    ) -> Layout:
        """The saved layout of `state_dir`, else one with the given (or default) base port."""
        try:
            saved = json.loads((state_dir / "layout.json").read_text())
        except (OSError, ValueError):
            saved = {}
        return cls(
            state_dir,
            base_port=saved.get("base_port", base_port or DEFAULT_BASE_PORT),
            nodes=saved.get("nodes", nodes),
            nats_nodes=saved.get("nats_nodes", nats_nodes),
        )


def write_kubeconfig(
    layout: Layout,
    path: Path,
    *,
    user: str,
    server: str | None = None,
    token: str | None = None,
) -> Path:
    """A kubeconfig for `user`, with its client certificate from the local PKI or, given, a
    bearer ``token`` (a ServiceAccount's), against the API server or `server` (a proxy in
    front of it: the serving certificate names 127.0.0.1, so TLS stays verified)."""
    p = layout.pki
    credentials = (
        {"token": token}
        if token is not None
        else {"client-certificate": str(p.client_cert(user)), "client-key": str(p.client_key(user))}
    )
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server or layout.server,
                    "certificate-authority": str(p.ca_cert),
                },
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(doc, indent=2))
    path.chmod(0o600)  # it may hold a token
    return path


def service_account_user(service: str) -> str:
    """The user name of a service's ServiceAccount (deploy/base), which a local client
    certificate can carry too, so that the manifests' RBAC applies to a local process."""
    return f"system:serviceaccount:{OPERATOR_NAMESPACE}:{service}"


def service_kubeconfig(layout: Layout, service: str) -> Path:
    """A kubeconfig that authenticates as ``service``'s ServiceAccount (a client certificate
    with its user name and the ServiceAccounts' group): the process then has exactly the
    rights the RBAC of deploy/base gives it, once those manifests are applied."""
    user = service_account_user(service)
    pki.ensure(layout.pki.dir, clients={user: "system:serviceaccounts"})
    return write_kubeconfig(layout, layout.state_dir / f"{service}.kubeconfig", user=user)
