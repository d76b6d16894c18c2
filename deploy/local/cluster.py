"""`python -m deploy.local cluster up|down|status|env`: a real local control plane plus NATS.

`up` builds (or reuses from the cache) etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl and kwok, generates the PKI, starts each component as a detached child
process with its log under the state directory, creates fake nodes that kwok keeps Ready,
starts nats-server with JetStream and the NATS users of deploy/ (passwords generated into the
state directory; `Layout.nats_url` connects as the admin user, `Layout.nats_credentials` gives
a service its own; with `--nats-tls` clients must use TLS, verified against the local PKI's CA),
creates the streams as the admin (`memcached-operator streams ensure`, the step no service may
do), installs the CRD, waits until all of it answers, and prints `export` lines for a shell.
All ports derive from one base port, so a second instance (the test suite's) runs beside a
developer's without collisions. `down` stops exactly the processes recorded in the state
directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.local import build
from deploy.local import nats as local_nats
from deploy.local.processes import Supervisor
from memcached_operator.admin import nats_auth, nats_conf, pki

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CRD_FILE = REPO / "deploy" / "crd" / "memcacheds.cache.example.com.yaml"
STAGES_FILE = HERE / "kwok-stages.yaml"
NEVER_READY_IMAGE = "never-ready.invalid/memcached:1"
SLOW_READY_IMAGE = "slow-ready.invalid/memcached:1"
DEFAULT_BASE_PORT = 17400
# Start order; `down` stops in reverse.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    local_nats.NAME,
)
_CM_USER = "system:kube-controller-manager"
_SCHED_USER = "system:kube-scheduler"


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


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "memcached-operator" / "local"


@dataclass(frozen=True)
class Layout:
    """Where one instance keeps its files and which ports it uses."""

    state_dir: Path
    base_port: int = DEFAULT_BASE_PORT
    nodes: int = 1

    @property
    def etcd_port(self) -> int:
        return self.base_port

    @property
    def etcd_peer_port(self) -> int:
        return self.base_port + 1

    @property
    def apiserver_port(self) -> int:
        return self.base_port + 2

    @property
    def controller_manager_port(self) -> int:
        return self.base_port + 3

    @property
    def scheduler_port(self) -> int:
        return self.base_port + 4

    @property
    def kwok_port(self) -> int:
        return self.base_port + 5

    @property
    def nats_port(self) -> int:
        return self.base_port + 6

    @property
    def nats_monitor_port(self) -> int:
        return self.base_port + 7

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
        scheme, _, address = self._nats_address.partition("://")
        return f"{scheme}://admin:{secret}@{address}"

    @property
    def _nats_address(self) -> str:
        return f"{'tls' if self.nats_tls else 'nats'}://127.0.0.1:{self.nats_port}"

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
            json.dumps({"base_port": self.base_port, "nodes": self.nodes})
        )

    @classmethod
    def load(cls, state_dir: Path, *, base_port: int | None = None, nodes: int = 1) -> Layout:
        """The saved layout of `state_dir`, else one with the given (or default) base port."""
        try:
            saved = json.loads((state_dir / "layout.json").read_text())
        except (OSError, ValueError):
            saved = {}
        return cls(
            state_dir,
            base_port=saved.get("base_port", base_port or DEFAULT_BASE_PORT),
            nodes=saved.get("nodes", nodes),
        )


def _log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def write_kubeconfig(layout: Layout, path: Path, *, user: str, server: str | None = None) -> Path:
    """A kubeconfig for `user`'s client certificate, against the API server or `server` (a
    proxy in front of it: the serving certificate names 127.0.0.1, so TLS stays verified)."""
    p = layout.pki
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
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(p.client_cert(user)),
                    "client-key": str(p.client_key(user)),
                },
            }
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


def _ssl_context(layout: Layout) -> ssl.SSLContext:
    p = layout.pki
    ctx = ssl.create_default_context(cafile=str(p.ca_cert))
    ctx.load_cert_chain(str(p.client_cert("admin")), str(p.client_key("admin")))
    return ctx


def _get(url: str, *, ctx: ssl.SSLContext | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (OSError, urllib.error.URLError) as err:
        return 0, str(err)


def _wait(what: str, check: object, *, timeout: float, sup: Supervisor, name: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if name and sup.running(name) is None:
            rec = sup.get(name)
            tail = Path(rec.log).read_text()[-3000:] if rec else ""
            raise RuntimeError(f"{name} exited while waiting for {what}; log tail:\n{tail}")
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def kubectl(layout: Layout, *args: str, input_: str | None = None) -> str:
    """Run the built kubectl against this instance; raises with its stderr on failure."""
    binary = build.bin_dir() / "kubectl"
    proc = subprocess.run(
        [str(binary), "--kubeconfig", str(layout.kubeconfig), *args],
        input=input_,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


OPERATOR_NAMESPACE = "memcached-operator"
SERVICES = ("watcher", "reconciler", "status")


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


def _audit_policy(path: Path) -> None:
    # Record who wrote Memcached status and when (tests and benchmarks count status writes
    # from this log), and every request of the services' own identities (the RBAC test derives
    # what each service calls from it); nothing else.
    path.write_text(
        json.dumps(
            {
                "apiVersion": "audit.k8s.io/v1",
                "kind": "Policy",
                "omitStages": ["RequestReceived"],
                "rules": [
                    {
                        "level": "Metadata",
                        "verbs": ["patch", "update"],
                        "resources": [
                            {"group": "cache.example.com", "resources": ["memcacheds/status"]}
                        ],
                    },
                    {
                        "level": "Metadata",
                        "users": [service_account_user(s) for s in SERVICES],
                    },
                    {"level": "None"},
                ],
            }
        )
    )


def ensure_streams(layout: Layout) -> None:
    """The administrative step: the streams and the lease bucket, created as the NATS admin
    with the real `memcached-operator streams ensure` (what the Job nats-streams runs)."""
    env = {**os.environ, **layout.nats_credentials("admin")}
    for name in ("STREAM_REPLICAS", "EVENTS_MAX_AGE", "LEASE_TTL"):
        env.pop(name, None)  # one node: the defaults, whatever this shell has set
    proc = subprocess.run(
        [sys.executable, "-m", "memcached_operator.cli", "streams", "ensure"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"streams ensure failed: {proc.stdout}{proc.stderr}")


def up(layout: Layout, *, nats_tls: bool | None = None) -> None:
    """Start (or keep) everything; ``nats_tls`` None keeps what the state directory says."""
    started = time.monotonic()
    bins = build.ensure_built()
    state = layout.state_dir
    state.mkdir(parents=True, exist_ok=True)
    layout.save()
    sup = Supervisor(state)
    p = pki.ensure(
        state / "pki",
        clients={"admin": "system:masters", _CM_USER: None, _SCHED_USER: None},
    )
    write_kubeconfig(layout, layout.kubeconfig, user="admin")
    write_kubeconfig(layout, state / "controller-manager.kubeconfig", user=_CM_USER)
    write_kubeconfig(layout, state / "scheduler.kubeconfig", user=_SCHED_USER)
    _audit_policy(state / "audit-policy.json")
    localkube = str(bins / "localkube")
    always_allow = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"

    sup.start(
        "etcd",
        [
            localkube,
            "etcd",
            f"--data-dir={state / 'etcd'}",
            f"--listen-client-url=http://127.0.0.1:{layout.etcd_port}",
            f"--listen-peer-url=http://127.0.0.1:{layout.etcd_peer_port}",
        ],
    )
    _wait(
        "etcd",
        lambda: _get(f"http://127.0.0.1:{layout.etcd_port}/health")[0] == 200,
        timeout=60,
        sup=sup,
        name="etcd",
    )
    _log("etcd ready")

    sup.start(
        "kube-apiserver",
        [
            localkube,
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{layout.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={layout.apiserver_port}",
            f"--tls-cert-file={p.serving_cert}",
            f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            "--endpoint-reconciler-type=none",
            f"--audit-policy-file={state / 'audit-policy.json'}",
            f"--audit-log-path={state / 'logs' / 'audit.log'}",
            "--audit-log-format=json",
            "--audit-log-mode=batch",
            "--audit-log-batch-max-wait=1s",
        ],
    )
    ctx = _ssl_context(layout)
    _wait(
        "kube-apiserver /readyz",
        lambda: _get(f"{layout.server}/readyz", ctx=ctx)[0] == 200,
        timeout=120,
        sup=sup,
        name="kube-apiserver",
    )
    _log("kube-apiserver ready")

    sup.start(
        "kube-controller-manager",
        [
            localkube,
            "kube-controller-manager",
            f"--kubeconfig={state / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={state / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={state / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={layout.controller_manager_port}",
            always_allow,
            f"--root-ca-file={p.ca_cert}",
            f"--service-account-private-key-file={p.sa_key}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
        ],
    )
    sup.start(
        "kube-scheduler",
        [
            localkube,
            "kube-scheduler",
            f"--kubeconfig={state / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={state / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={state / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={layout.scheduler_port}",
            always_allow,
            "--leader-elect=false",
        ],
    )
    sup.start(
        "kwok",
        [
            str(bins / "kwok"),
            f"--kubeconfig={layout.kubeconfig}",
            f"--config={STAGES_FILE}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=10.244.0.1",
            "--cidr=10.244.0.0/16",
            f"--server-address=127.0.0.1:{layout.kwok_port}",
        ],
    )
    for component, port in (
        ("kube-controller-manager", layout.controller_manager_port),
        ("kube-scheduler", layout.scheduler_port),
    ):
        _wait(
            f"{component} /healthz",
            lambda port=port: (
                _get(  # type: ignore[misc]
                    f"https://127.0.0.1:{port}/healthz", ctx=_insecure()
                )[0]
                == 200
            ),
            timeout=90,
            sup=sup,
            name=component,
        )
        _log(f"{component} ready")

    _ensure_nodes(layout)
    local_nats.start(
        sup,
        port=layout.nats_port,
        monitor_port=layout.nats_monitor_port,
        auth=True,
        tls=nats_tls,
    )
    _log(f"nats-server ready{' (TLS only)' if layout.nats_tls else ''}")
    ensure_streams(layout)
    _log("streams ready")
    if CRD_FILE.exists():
        kubectl(layout, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        kubectl(
            layout,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/memcacheds.cache.example.com",
        )
        _log("CRD installed")
    _wait(
        "nodes Ready and the default service account",
        lambda: _nodes_ready(layout) and _has_default_sa(layout),
        timeout=90,
        sup=sup,
        name="kwok",
    )
    _log(f"cluster ready in {time.monotonic() - started:.1f}s")


def _insecure() -> ssl.SSLContext:
    # Component health ports serve self-signed certificates; only their liveness is asked.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _ensure_nodes(layout: Layout) -> None:
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"kwok-node-{i}",
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": f"kwok-node-{i}",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        for i in range(layout.nodes)
    ]
    kubectl(
        layout,
        "apply",
        "-f",
        "-",
        input_=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
    )


def _nodes_ready(layout: Layout) -> bool:
    try:
        out = kubectl(layout, "get", "nodes", "-o", "json")
    except RuntimeError:
        return False
    items = json.loads(out)["items"]
    ready = [
        n
        for n in items
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
    ]
    return len(ready) >= layout.nodes


def _has_default_sa(layout: Layout) -> bool:
    try:
        kubectl(layout, "get", "serviceaccount", "default", "-n", "default")
    except RuntimeError:
        return False
    return True


def down(layout: Layout, *, purge: bool = False) -> list[str]:
    sup = Supervisor(layout.state_dir)
    stopped = [name for name in reversed(COMPONENTS) if sup.stop(name)]
    if purge:
        shutil.rmtree(layout.state_dir, ignore_errors=True)
    return stopped


def status(layout: Layout) -> dict[str, dict[str, object]]:
    sup = Supervisor(layout.state_dir)
    out: dict[str, dict[str, object]] = {}
    for name in COMPONENTS:
        rec = sup.get(name)
        out[name] = {
            "running": bool(rec and rec.alive()),
            "pid": rec.pid if rec else None,
            "log": rec.log if rec else None,
        }
    return out


def env_lines(layout: Layout) -> list[str]:
    bins = build.bin_dir()
    return [
        f"export KUBECONFIG={layout.kubeconfig}",
        f"export NATS_URL={layout.nats_url}",
        *([f"export NATS_CA={layout.nats_ca}"] if layout.nats_tls else []),
        f'export PATH="{bins}:$PATH"',
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    add_common_arguments(parser)
    parser.add_argument("--purge", action="store_true", help="down: also delete the state dir")
    parser.add_argument(
        "--nats-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="up: NATS clients must use TLS (certificate from the local PKI, NATS_CA its CA); "
        "unset keeps what the state directory has",
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Which local instance: shared by `cluster` and `demo`."""
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("MCOP_STATE_DIR", default_state_dir())),
        help="where PKI, data, logs and pids live (env MCOP_STATE_DIR)",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=int(os.environ.get("MCOP_BASE_PORT", DEFAULT_BASE_PORT)),
        help="first of 8 consecutive loopback ports (env MCOP_BASE_PORT)",
    )
    parser.add_argument(
        "--nodes", type=int, default=int(os.environ.get("MCOP_NODES", "1")), help="fake nodes"
    )


def run(args: argparse.Namespace) -> int:
    layout = Layout.load(args.state_dir, base_port=args.base_port, nodes=args.nodes)
    if args.action == "up":
        up(layout, nats_tls=args.nats_tls)
        print("\n".join(env_lines(layout)))
    elif args.action == "down":
        stopped = down(layout, purge=args.purge)
        _log(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    elif args.action == "status":
        running = 0
        for name, info in status(layout).items():
            state = "running" if info["running"] else "stopped"
            running += bool(info["running"])
            print(f"{name:<26} {state:<8} pid={info['pid'] or '-'}")
        return 0 if running == len(COMPONENTS) else 3
    else:
        print("\n".join(env_lines(layout)))
    return 0
