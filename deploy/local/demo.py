"""`python -m deploy.local demo`: the whole system on this machine in one command.

It brings up the local control plane and NATS (reusing them if up), runs the services as local
processes the way deploy/ runs them in a cluster (watcher x2, reconciler x3, status x1, each
with its own NATS user, POD_NAME/POD_NAMESPACE and health port), applies the samples, shows
progress until every sample is Available, then prints `kubectl get mc`, one trace id and the
last audit records. It keeps running until Ctrl-C (then stops everything it started), or with
--teardown stops at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deploy.local import cluster as local_cluster
from deploy.local.cluster_command import add_common_arguments
from deploy.local.layout import Layout
from deploy.local.processes import Supervisor

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "samples"
FLEET = (("watcher", 2), ("reconciler", 3), ("status", 1))
DEMO_NAMESPACE = "default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--teardown",
        action="store_true",
        help="stop the services and the cluster after showing the result instead of running on",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for the samples"
    )


def _service_env(layout: Layout, service: str, index: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KUBECONFIG=str(layout.kubeconfig),
        NATS_URL=layout.nats_url,
        POD_NAME=f"{service}-{index}",
        POD_NAMESPACE="memcached-operator",
        HEALTH_PORT="0",
        LOG_FORMAT="json",
        OTEL_SERVICE_NAME=service,
    )
    env.update(layout.nats_credentials(service))
    return env


def start_fleet(layout: Layout) -> Supervisor:
    sup = Supervisor(layout.state_dir / "demo")
    for service, count in FLEET:
        for i in range(count):
            sup.start(
                f"{service}-{i}",
                [sys.executable, "-m", "memcached_operator.cli", service],
                env=_service_env(layout, service, i),
            )
    return sup


def stop_fleet(sup: Supervisor) -> None:
    for rec in sup.records():
        sup.stop(rec.name, timeout=35)


def _samples(layout: Layout) -> list[str]:
    out = local_cluster.kubectl(layout, "apply", "-k", str(SAMPLES), "-n", DEMO_NAMESPACE)
    print(out.strip())
    return [line.split()[0].split("/")[-1] for line in out.splitlines() if line.strip()]


def wait_available(layout: Layout, names: list[str], *, timeout: float) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    state: dict[str, bool] = {}
    last = ""
    while time.monotonic() < deadline:
        items = json.loads(
            local_cluster.kubectl(layout, "get", "mc", "-n", DEMO_NAMESPACE, "-o", "json")
        )["items"]
        state = {
            i["metadata"]["name"]: any(
                c["type"] == "Available" and c["status"] == "True"
                for c in (i.get("status") or {}).get("conditions") or []
            )
            for i in items
            if i["metadata"]["name"] in names
        }
        line = f"[demo] {sum(state.values())}/{len(names)} Available: " + ", ".join(
            f"{n}={'yes' if ok else 'not yet'}" for n, ok in sorted(state.items())
        )
        if line != last:
            print(line, flush=True)
            last = line
        if len(state) == len(names) and all(state.values()):
            break
        time.sleep(1)
    return state


def show(layout: Layout) -> None:
    print("\n$ kubectl get mc")
    print(local_cluster.kubectl(layout, "get", "mc", "-n", DEMO_NAMESPACE).rstrip())
    items = json.loads(
        local_cluster.kubectl(layout, "get", "mc", "-n", DEMO_NAMESPACE, "-o", "json")
    )["items"]
    print("\nhow an application connects (status.endpoints, or DNS of the headless Service):")
    for item in items:
        name = item["metadata"]["name"]
        endpoints = (item.get("status") or {}).get("endpoints") or []
        print(
            f"  {name}: servers {','.join(endpoints) or '-'}"
            f" | dns {name}.{DEMO_NAMESPACE}.svc port 11211"
        )
    traces = [(i.get("status") or {}).get("lastTraceId") for i in items]
    trace_id = next((t for t in traces if t), "")
    print(f"\ntrace id of the last reconcile of {items[0]['metadata']['name']}: {trace_id or '-'}")
    print("\n$ memcached-operator audit --since 10m (last records)")
    # As the read-only audit user, as an operator would.
    env = dict(os.environ, **layout.nats_credentials("audit"))
    audit = subprocess.run(
        [
            sys.executable,
            "-m",
            "memcached_operator.cli",
            "audit",
            "--since",
            "10m",
            "-n",
            DEMO_NAMESPACE,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    lines = audit.stdout.splitlines()
    print("\n".join(lines[:1] + lines[-12:]))


def run(args: argparse.Namespace) -> int:
    layout = Layout.load(
        args.state_dir, base_port=args.base_port, nodes=args.nodes, nats_nodes=args.nats_nodes
    )
    print("[demo] bringing up the local control plane and NATS", flush=True)
    local_cluster.up(layout)
    sup = start_fleet(layout)
    print(
        "[demo] started " + ", ".join(f"{s} x{n}" for s, n in FLEET) + f" (logs: {sup.log_dir})",
        flush=True,
    )
    code = 1
    try:
        names = _samples(layout)
        state = wait_available(layout, names, timeout=args.timeout)
        show(layout)
        ok = len(state) == len(names) and all(state.values())
        print(f"\n[demo] {'all samples Available' if ok else 'NOT all samples Available'}")
        code = 0 if ok else 1
        if not args.teardown:
            print("[demo] running; Ctrl-C stops the services and the cluster", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print("[demo] stopping the services and the cluster", flush=True)
        stop_fleet(sup)
        local_cluster.down(layout)
    return code
