"""A real local control plane plus NATS (`python -m deploy.local cluster up|down|status|env`).

`up` builds (or reuses from the cache) etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl and kwok, generates the PKI, starts each component as a detached child
process with its log under the state directory, creates fake nodes that kwok keeps Ready,
starts nats-server with JetStream and the NATS users of deploy/ (passwords generated into the
state directory; `Layout.nats_url` connects as the admin user, `Layout.nats_credentials` gives
a service its own; with `--nats-tls` clients must use TLS, verified against the local PKI's CA),
creates the streams as the admin (`memcached-operator streams ensure`, the step no service may
do), installs the CRD, waits until all of it answers, and prints `export` lines for a shell.
All ports derive from one base port, so a second instance (the test suite's) runs beside a
developer's without collisions (deploy/local/layout.py). `down` stops exactly the processes
recorded in the state directory. The command line is deploy/local/cluster_command.py.

With ``--nats-nodes 3`` NATS is a JetStream cluster of three servers on loopback (routes between
them, each with its own store), the streams and the lease bucket are created with three
replicas, and NATS_URL lists every node (deploy/local/nats.py, deploy/local/nats_cluster.py).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploy.local import build
from deploy.local import nats as local_nats
from deploy.local.layout import SERVICES, Layout, service_account_user, write_kubeconfig
from deploy.local.processes import Supervisor
from memcached_operator.admin import pki
from memcached_operator.audit.kubectl import DEFAULT_OPERATOR_NAMESPACE as OPERATOR_NAMESPACE
from memcached_operator.audit.kubectl import NATS_CONFIGMAP, NATS_CONFIGMAP_KEY

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CRD_FILE = REPO / "deploy" / "crd" / "memcacheds.cache.example.com.yaml"
STAGES_FILE = HERE / "kwok-stages.yaml"
NEVER_READY_IMAGE = "never-ready.invalid/memcached:1"
SLOW_READY_IMAGE = "slow-ready.invalid/memcached:1"
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


def log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


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
    argv = [str(binary), "--kubeconfig", str(layout.kubeconfig), *args]
    return _run(argv, what=f"kubectl {' '.join(args)}", input=input_)


def _run(argv: list[str], *, what: str, **options: Any) -> str:
    """Run a command to its end (2 minutes at most): its output, or a RuntimeError saying
    ``what`` failed with everything it printed."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, **options)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stdout}{proc.stderr}".strip())
    return proc.stdout


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


def stream_replicas(layout: Layout) -> int:
    """Replicas of every stream: 3 on a cluster of three or more NATS nodes (what deploy/base
    runs), else 1 (two nodes cannot keep a quorum of R2 through the loss of either)."""
    return 3 if layout.nats_nodes >= 3 else 1


def components(layout: Layout) -> tuple[str, ...]:
    """The recorded processes of this instance, in start order (every NATS node)."""
    nodes = tuple(local_nats.node_name(n) for n in range(1, layout.nats_nodes))
    return (*COMPONENTS, *nodes)


def ensure_streams(layout: Layout) -> None:
    """The administrative step: the streams and the lease bucket, created as the NATS admin
    with the real `memcached-operator streams ensure` (what the Job nats-streams runs)."""
    env = {**os.environ, **layout.nats_credentials("admin")}
    for name in ("STREAM_REPLICAS", "EVENTS_MAX_AGE", "EVENTS_PER_OBJECT", "LEASE_TTL"):
        env.pop(name, None)  # the defaults, whatever this shell has set
    env["STREAM_REPLICAS"] = str(stream_replicas(layout))
    argv = [sys.executable, "-m", "memcached_operator.cli", "streams", "ensure"]
    _run(argv, what="streams ensure", env=env, cwd=REPO)


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
    log("etcd ready")

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
    log("kube-apiserver ready")

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
        log(f"{component} ready")

    _ensure_nodes(layout)
    start_nats(layout, sup, tls=nats_tls)
    nodes = f"{layout.nats_nodes} nodes" if layout.nats_nodes > 1 else "one node"
    log(f"nats-server ready ({nodes}{', TLS only' if layout.nats_tls else ''})")
    ensure_streams(layout)
    log("streams ready")
    if CRD_FILE.exists():
        kubectl(layout, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        kubectl(
            layout,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/memcacheds.cache.example.com",
        )
        log("CRD installed")
    publish_nats_configmap(layout)
    _wait(
        "nodes Ready and the default service account",
        lambda: _nodes_ready(layout) and _has_default_sa(layout),
        timeout=90,
        sup=sup,
        name="kwok",
    )
    log(f"cluster ready in {time.monotonic() - started:.1f}s")


def publish_nats_configmap(layout: Layout) -> None:
    """What deploy/base's ConfigMap memcached-operator-nats is in a cluster: where people's
    tools (`kubectl memcached`) find NATS when NATS_URL is unset. The URL only: credentials
    stay in each person's environment."""
    url = layout.nats_credentials("audit")["NATS_URL"]
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": NATS_CONFIGMAP, "namespace": OPERATOR_NAMESPACE},
            "data": {NATS_CONFIGMAP_KEY: url},
        },
    ]
    for doc in docs:
        kubectl(layout, "apply", "--server-side", "-f", "-", input_=json.dumps(doc))


def start_nats(layout: Layout, sup: Supervisor, *, tls: bool | None = None) -> None:
    """Start (or keep) the instance's nats-server, or every node of its NATS cluster."""
    if layout.nats_nodes <= 1:
        local_nats.start(
            sup, port=layout.nats_port, monitor_port=layout.nats_monitor_port, auth=True, tls=tls
        )
    else:
        local_nats.start_cluster(sup, ports=layout.nats_ports, auth=True, tls=tls)


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
    stopped = [name for name in reversed(components(layout)) if sup.stop(name)]
    if purge:
        shutil.rmtree(layout.state_dir, ignore_errors=True)
    return stopped


def status(layout: Layout) -> dict[str, dict[str, object]]:
    sup = Supervisor(layout.state_dir)
    out: dict[str, dict[str, object]] = {}
    for name in components(layout):
        rec = sup.get(name)
        out[name] = {
            "running": bool(rec and rec.alive()),
            "pid": rec.pid if rec else None,
            "log": rec.log if rec else None,
        }
    return out
