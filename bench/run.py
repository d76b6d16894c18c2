"""`python -m bench.run`: one run of every scenario against one local cluster it brings up.

Scenarios, each in its own namespace and timed from the first of N concurrent CR creates:
the API floor (bench/floor.py), kopf (bench/peers/kopf_operator.py), the controller-runtime
peer (bench/peers/controller_runtime/: 1 and 32 workers, and 32 in 2 replicas under leader
election), this pipeline with 1, 2 and 4 reconciler processes, the 4-worker pipeline again with tracing exported over OTLP/HTTP
to a real receiver (bench/otlp.py), and the watcher alone for 5,000 changes. With
``--latency-ms`` every contender reaches the API server through bench/proxy.py. Results go to
bench/results/ (JSON, Markdown, PNG); ``--rss-10k`` instead measures the services' memory with
10,000 CRs in the cluster. The cluster, its processes and its state directory are removed at
the end, whatever happens.

``--scaling`` is the reconciler fleet's own scenario: 1, 2, 4 and 8 reconciler processes taking
one request at a time (--concurrency 1) behind 50 ms of API latency, so that each worker waits
on the API, not on a core. It measures the fleet alone: no status service, and the
controller-manager paused (SIGSTOP) while the Deployments are written, so no rollouts, pods or
status writes compete with it for the machine's two cores (on a real cluster they run on other
machines); it is resumed before the namespace is deleted. ``--with-downstream`` keeps both.
"""

import argparse
import asyncio
import datetime as dt
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import report
from bench.cluster import BenchCluster
from bench.contenders import REPO
from bench.harness import free_port, machine, source_version
from bench.scenarios import Bench, log
from deploy.local.layout import Layout, block_size, free_base_port
from deploy.local.processes import Supervisor
from memcached_operator.shared.kube.client import KubeClient

RESULTS = REPO / "bench" / "results"


async def main_async(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix="mcop-bench-"))
    layout = Layout(
        state,
        base_port=free_base_port(block_size(args.nats_nodes)),
        nodes=args.nodes,
        nats_nodes=args.nats_nodes,
    )
    cluster = BenchCluster(layout)
    log(f"cluster in {state} (ports from {layout.base_port})")
    proxy: Supervisor | None = None
    started_at = dt.datetime.now(dt.UTC)
    info = machine()
    source = source_version(REPO)
    bench: Bench | None = None
    try:
        await asyncio.to_thread(cluster.up)
        kube = await KubeClient.connect(str(layout.kubeconfig))
        try:
            bench = Bench(args, cluster, kube)
            if args.latency_ms > 0:
                port = free_port()
                proxy = bench.supervisor
                rec = proxy.start(
                    "latency-proxy",
                    [
                        sys.executable,
                        "-m",
                        "bench.proxy",
                        "--port",
                        str(port),
                        "--upstream-port",
                        str(layout.apiserver_port),
                        "--latency-ms",
                        str(args.latency_ms),
                    ],
                    cwd=REPO,
                )
                await asyncio.sleep(1)
                if not rec.alive():
                    raise RuntimeError("the latency proxy did not start")
                bench.operator_kubeconfig = cluster.operator_kubeconfig(
                    f"https://127.0.0.1:{port}", name="operator-proxied"
                )
            if args.rss_10k:
                results: dict[str, Any] = {"scenarios": {}}
                results["rss_10k"] = await bench.rss_10k(args.rss_10k)
                stem = "rss-10k"
            else:
                results = await bench.run()
                stem = args.out or (
                    "latest" if not args.latency_ms else f"proxy-{args.latency_ms:g}ms"
                )
                if args.scaling and not args.out:
                    stem = f"scaling-{stem}" + ("-downstream" if args.with_downstream else "")
        finally:
            await kube.close()
        results["meta"] = {
            "date": started_at.isoformat(timespec="seconds"),
            "duration_s": round((dt.datetime.now(dt.UTC) - started_at).total_seconds(), 1),
            "machine": info,
            "n": args.n,
            "size": args.size,
            "nodes": args.nodes,
            "nats_nodes": args.nats_nodes,
            "latency_ms": args.latency_ms,
            "create_concurrency": args.create_concurrency,
            "concurrency": args.concurrency,
            "status_concurrency": args.status_concurrency,
            "floor_concurrency": args.floor_concurrency,
            "repeat": args.repeat,
            "scaling": args.scaling,
            "with_downstream": args.with_downstream,
            "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
            "source": source,
        }
        for path in report.write(results, args.results_dir, stem=stem):
            log(f"wrote {path}")
        print(report.markdown(results))
        return 0
    finally:
        if bench is not None:
            for c in bench.started:
                c.stop()
            for rec in bench.supervisor.records():
                bench.supervisor.stop(rec.name)
        await asyncio.to_thread(cluster.down)
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--n", type=int, default=1000, help="CRs per scenario (default 1000)")
    p.add_argument(
        "--size",
        type=int,
        default=1,
        help="spec.size of every CR (default 1; from 2 each CR also owns a PodDisruptionBudget)",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="API latency added by a proxy")
    p.add_argument("--create-concurrency", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8, help="reconciler --concurrency")
    p.add_argument(
        "--status-concurrency", type=int, default=16, help="status --concurrency (its default)"
    )
    p.add_argument("--floor-concurrency", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--nodes", type=int, default=4, help="fake kwok nodes")
    p.add_argument(
        "--nats-nodes",
        type=int,
        choices=[1, 3],
        default=1,
        help="NATS servers: 3 is a JetStream cluster with every stream at 3 replicas",
    )
    p.add_argument("--timeout", type=float, default=0, help="per scenario (default 120 + 0.5 N)")
    p.add_argument("--watcher-changes", type=int, default=5000)
    p.add_argument("--skip-kopf", action="store_true")
    p.add_argument("--skip-floor", action="store_true")
    p.add_argument(
        "--skip-go-peer", action="store_true", help="skip the controller-runtime peer's runs"
    )
    p.add_argument(
        "--go-workers",
        type=int,
        nargs="+",
        default=[1, 32],
        help="MaxConcurrentReconciles of the Go peer's runs; the largest also runs in "
        "--go-replicas replicas under leader election",
    )
    p.add_argument(
        "--go-replicas", type=int, default=2, help="replicas of the Go peer's last run (1: none)"
    )
    p.add_argument("--skip-tracing", action="store_true")
    p.add_argument("--skip-watcher", action="store_true")
    p.add_argument(
        "--rss-10k",
        type=int,
        nargs="?",
        const=10000,
        default=0,
        help="only measure service RSS with this many CRs (default 10000)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the contenders this many times, interleaved; the table shows each one's "
        "median run and the ratios' spread across repetitions",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="the reconciler fleet's scaling sweep: workers 1 2 4 8 at --concurrency 1 behind "
        "50 ms of API latency (unless given), the fleet alone (see the module docstring)",
    )
    p.add_argument(
        "--with-downstream",
        action="store_true",
        help="with --scaling: keep the status service and the controller-manager's rollouts",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--out", help="file stem in the results dir (default latest / proxy-Nms)")
    p.add_argument("--keep", action="store_true", help="keep the state dir (logs) afterwards")
    args = p.parse_args(argv)
    if args.scaling:
        args.latency_ms = args.latency_ms or 50.0
        args.concurrency = 1
        if args.workers == p.get_default("workers"):
            args.workers = [1, 2, 4, 8]
        args.n = args.n if args.n != p.get_default("n") else 300
        args.skip_kopf = args.skip_floor = args.skip_tracing = args.skip_watcher = True
        args.skip_go_peer = True
    if not args.timeout:
        args.timeout = 120 + 0.5 * args.n
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
