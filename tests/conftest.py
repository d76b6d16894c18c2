"""Session fixtures: a real nats-server and (in later fixtures) the real local control plane.

Everything is started once per test session in a temporary state directory on free ports,
so a developer's own `python -m deploy.local cluster up` keeps running untouched beside it.
Logs of the started processes are printed when a test fails (see pytest_runtest_makereport).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.local import build
from deploy.local import cluster as local_cluster
from deploy.local import nats as local_nats
from deploy.local.layout import Layout, block_size, free_base_port, free_port
from deploy.local.nats_cluster import NatsCluster
from deploy.local.processes import Supervisor
from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api.models import Memcached
from tests.support import Services, condition, services, wait_for


def pytest_configure(config: pytest.Config) -> None:
    # Deselect with `-m "not packaging"`: it builds the wheel and installs it from PyPI.
    config.addinivalue_line(
        "markers", "packaging: builds the wheel and runs the services from a fresh venv"
    )


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


class Cluster:
    """The session's real control plane + NATS, with small helpers the tests share."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.supervisor = Supervisor(layout.state_dir)
        self.nats = NatsCluster(layout)

    @property
    def kubeconfig(self) -> str:
        return str(self.layout.kubeconfig)

    @property
    def nats_url(self) -> str:
        return self.layout.nats_url

    @property
    def bin_dir(self) -> Path:
        return build.bin_dir()

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a child process (a service or kubectl) pointed at this cluster."""
        env = dict(os.environ)
        env.update(
            KUBECONFIG=self.kubeconfig,
            NATS_URL=self.nats_url,
            MCOP_STATE_DIR=str(self.layout.state_dir),
            PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
        )
        env.update(extra)
        return env

    def kubectl(
        self, *args: str, input_: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig, *args],
            input=input_,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def audit(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real `memcached-operator audit` with ``args``, as the admin or as ``user``."""
        credentials = self.layout.nats_credentials(user) if user else {}
        return subprocess.run(
            [sys.executable, "-m", "memcached_operator.cli", "audit", *args],
            env=self.env(**credentials),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def get_mc(self, namespace: str, name: str) -> dict[str, Any]:
        """The Memcached as `kubectl get mc -o json` shows it."""
        return dict(self.kubectl_json("get", "mc", "-n", namespace, name))

    def apply_memcached(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """`kubectl apply` a Memcached, as a user would."""
        body = {
            "apiVersion": "cache.example.com/v1",
            "kind": "Memcached",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        self.kubectl("apply", "-f", "-", input_=json.dumps(body))

    def deployments_as_desired(
        self, namespace: str
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
        """The Memcacheds and Deployments of ``namespace``, and the names of the Memcacheds
        whose Deployment is as the reconciler would write it."""
        crs = self.kubectl_json("get", "mc", "-n", namespace)["items"]
        deployments = {
            d["metadata"]["name"]: d
            for d in self.kubectl_json("get", "deployments", "-n", namespace)["items"]
        }
        good = [
            c["metadata"]["name"]
            for c in crs
            if c["metadata"]["name"] in deployments
            and matches(
                deployments[c["metadata"]["name"]], desired_deployment(Memcached.from_api(c))
            )
        ]
        return crs, deployments, good

    def wait_conditions(
        self,
        namespace: str,
        name: str,
        *,
        reasons: Mapping[str, str] | None = None,
        timeout: float = 60,
        what: str = "",
        **statuses: str,
    ) -> dict[str, Any]:
        """The Memcached once each condition ``type=status`` of ``statuses`` holds, and each
        condition type of ``reasons`` has that reason."""
        wanted = {**{(t, "status"): v for t, v in statuses.items()}}
        wanted |= {(t, "reason"): v for t, v in (reasons or {}).items()}

        def matching() -> dict[str, Any] | None:
            mc = self.get_mc(namespace, name)
            ok = all(condition(mc, t).get(field) == v for (t, field), v in wanted.items())
            return mc if ok else None

        default = ", ".join(f"{t} {field} {v}" for (t, field), v in wanted.items())
        found: dict[str, Any] = wait_for(
            matching, timeout=timeout, what=f"{name}: {what or default}"
        )
        return found

    def wait_available(
        self, namespace: str, name: str, timeout: int = 90
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl wait --for=condition=Available mc/<name>`, failing the test on a timeout."""
        return self.kubectl(
            "wait",
            "-n",
            namespace,
            "--for=condition=Available",
            f"mc/{name}",
            f"--timeout={timeout}s",
            timeout=timeout + 10,
        )

    def audit_log_caught_up(self, timeout: float = 30) -> None:
        """Return once every API request that completed before this call is in the audit log:
        the log is written in batches, in order, so a marker write seen there is the proof."""
        marker = "audit-marker"
        if self.kubectl("get", "mc", "-n", "default", marker, check=False).returncode != 0:
            self.apply_memcached("default", marker, {"size": 0})
        log = self.layout.state_dir / "logs" / "audit.log"

        def markers() -> int:
            text = log.read_text() if log.exists() else ""
            return sum(
                1
                for line in text.splitlines()
                if f"/namespaces/default/memcacheds/{marker}/status" in line
                and '"ResponseComplete"' in line
            )

        before = markers()
        # No service watches "default", so this status write of the test's own changes nothing.
        self.kubectl(
            "patch", "mc", "-n", "default", marker, "--subresource=status", "--type=merge",
            "-p", '{"status": {}}',
        )  # fmt: skip
        wait_for(lambda: markers() > before, timeout=timeout, what="the audit log's marker")

    def restart_nats(self, *, kill: bool = True) -> None:
        if kill:
            self.supervisor.kill(local_nats.NAME)
        self.supervisor.stop(local_nats.NAME)
        local_nats.start(
            self.supervisor, port=self.layout.nats_port, monitor_port=self.layout.nats_monitor_port
        )

    def logs(self) -> dict[str, str]:
        out = {}
        for rec in self.supervisor.records():
            try:
                out[rec.name] = Path(rec.log).read_text(errors="replace")[-4000:]
            except OSError:
                pass
        return out


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)
    and nats-server, started once per session on free ports in a temporary directory."""
    yield from _up(Layout(tmp_path_factory.mktemp("cluster"), base_port=free_base_port(), nodes=2))


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Like ``cluster``, but NATS is a JetStream cluster of three nodes with every stream at
    three replicas (`cluster up --nats-nodes 3`); ``.nats`` finds and kills its nodes. One per
    module: a second control plane and three NATS nodes left running for the rest of the
    session would load the machine under every later test."""
    state = tmp_path_factory.mktemp("nats-cluster")
    yield from _up(Layout(state, base_port=free_base_port(block_size(3)), nodes=2, nats_nodes=3))


def _up(layout: Layout) -> Iterator[Cluster]:
    """Bring ``layout``'s cluster up for a fixture, and down again after it (or on failure)."""
    try:
        local_cluster.up(layout)
    except Exception:
        local_cluster.down(layout)
        raise
    yield Cluster(layout)
    local_cluster.down(layout)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    names = getattr(item, "fixturenames", ())
    if report.failed and ("cluster" in names or "nats_cluster" in names):
        funcargs = getattr(item, "funcargs", {})
        instance = funcargs.get("cluster") or funcargs.get("nats_cluster")
        if isinstance(instance, Cluster):
            for name, tail in instance.logs().items():
                report.sections.append((f"log tail: {name}", tail))
            report.sections.append(("state dir (kept)", str(instance.layout.state_dir)))
    return report


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, so tests sharing the session's streams don't mix."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{base}-{random.randrange(16**5):05x}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def service_procs(cluster: Cluster, tmp_path: Path) -> Iterator[Services]:
    """Start services as processes against the session cluster; all stopped after the test."""
    with services(tmp_path / "services", cluster.env()) as svc:
        yield svc
