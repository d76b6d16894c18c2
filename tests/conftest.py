"""Session fixtures: a real nats-server and (in later fixtures) the real local control plane.

Everything is started once per test session in a temporary state directory on free ports,
so a developer's own `memcached-operator cluster up` keeps running untouched beside it.
Logs of the started processes are printed when a test fails (see pytest_runtest_makereport).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.local import nats as local_nats
from deploy.local.processes import Supervisor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    supervisor: Supervisor
    port: int
    monitor_port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def restart(self, *, kill: bool = False) -> None:
        if kill:
            self.supervisor.kill(local_nats.NAME)
        self.supervisor.stop(local_nats.NAME)
        local_nats.start(self.supervisor, port=self.port, monitor_port=self.monitor_port)

    def stop(self) -> None:
        self.supervisor.stop(local_nats.NAME)

    def start(self) -> None:
        local_nats.start(self.supervisor, port=self.port, monitor_port=self.monitor_port)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    state: Path = tmp_path_factory.mktemp("nats")
    server = NatsServer(Supervisor(state), free_port(), free_port())
    server.start()
    yield server
    server.stop()
