"""`python -m bench.run`: one run of every scenario against one local cluster it brings up.

Scenarios, each in its own namespace and timed from the first of N concurrent CR creates:
the API floor (bench/floor.py), kopf (bench/peers/kopf_operator.py), this pipeline with 1, 2
and 4 reconciler processes, the 4-worker pipeline again with tracing exported over OTLP/HTTP
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

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from prometheus_client.parser import text_string_to_metric_families

from bench import report
from bench.cluster import BenchCluster
from bench.contenders import REPO, Contender, FloorClient, KopfPeer, Pipeline
from bench.harness import (
    CpuMeter,
    Observer,
    RssPoller,
    create_crs,
    create_namespace,
    delete_namespace,
    free_port,
    free_port_block,
    machine,
    memcached,
    metric_sum,
    percentile,
    scrape,
    source_version,
    wait_http_ok,
    wait_service_ready,
)
from deploy.local.cluster import Layout
from deploy.local.processes import Supervisor
from memcached_operator.reconciler.desired import desired_deployment
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import EVENTS_STREAM, REQUESTS_STREAM
from memcached_operator.shared.kube.client import DEPLOYMENT, MEMCACHED, JsonObject, KubeClient

RESULTS = REPO / "bench" / "results"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: BenchCluster, kube: KubeClient) -> None:
        self.args = args
        self.cluster = cluster
        self.kube = kube
        self.supervisor = Supervisor(cluster.layout.state_dir / "bench")
        self.operator_kubeconfig = cluster.operator_kubeconfig()
        self.started: list[Contender] = []

    def contender(self, cls: type[Contender], namespace: str, **kwargs: Any) -> Contender:
        c = cls(
            supervisor=self.supervisor,
            kubeconfig=self.operator_kubeconfig,
            layout=self.cluster.layout,
            namespace=namespace,
            prefix=namespace,
            **kwargs,
        )
        self.started.append(c)
        return c

    async def purge_requests(self) -> None:
        """Leftover requests of an earlier scenario must not become this one's work."""
        nc = await nats.connect(self.cluster.layout.nats_url)
        try:
            with contextlib.suppress(Exception):
                await nc.jetstream().purge_stream(REQUESTS_STREAM)
        finally:
            await nc.close()

    async def quiet_control_plane(
        self, *, below: float = 0.25, window: float = 3.0, timeout: float = 120.0
    ) -> float:
        """Wait until the control plane (and nats-server) use less than ``below`` of a core
        over ``window`` seconds: the deletion before leaves work behind (garbage collection,
        etcd compaction) that would otherwise land on the next scenario. Returns the wait."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            meter = CpuMeter(self.cluster.pids())
            meter.start()
            await asyncio.sleep(window)
            used = sum(meter.stop().values()) / window
            log(f"control plane at {used:.2f} cores")
            if used < below:
                break
        return time.monotonic() - started

    @staticmethod
    async def _cpu_when_deployed(observer: Observer, cpu: CpuMeter) -> dict[str, float]:
        """CPU seconds per process from the first create until every Deployment is correct:
        what the race to the Deployments cost, before the rollouts."""
        await observer.deployments_done.wait()
        return cpu.stop()

    def _pause_downstream(self, pause: bool) -> None:
        """Stop or continue the controller-manager (rollouts: ReplicaSets, pods, their status)."""
        pid = self.cluster.pids().get("kube-controller-manager")
        if pid is not None:
            os.kill(pid, signal.SIGSTOP if pause else signal.SIGCONT)

    async def scenario(self, name: str, contender: Contender) -> dict[str, Any]:
        n = self.args.n
        namespace = contender.namespace
        await create_namespace(self.kube, namespace)
        await self.purge_requests()
        log(f"{name}: starting")
        load_before = os.getloadavg()[0]
        await contender.start()
        observer = Observer(self.kube, namespace, n)
        await observer.start()
        requests_before = await asyncio.to_thread(self.cluster.operator_requests)
        rss = RssPoller(contender.pids())
        rss.start()
        cpu = CpuMeter({**self.cluster.pids(), **contender.pids()})
        cpu.start()
        objs = [memcached(f"mc-{i:05d}", namespace) for i in range(n)]
        isolated = self.args.scaling and not self.args.with_downstream
        if isolated:
            self._pause_downstream(True)
        try:
            # The workers' counters from here to done: where their time went during the burst.
            metrics_at_start = contender.metrics()
            t0 = time.monotonic()
            created = await create_crs(
                self.kube,
                objs,
                concurrency=self.args.create_concurrency,
                on_created=observer.created,
            )
            t_created = time.monotonic() - t0
            cpu_to_deployments = asyncio.create_task(self._cpu_when_deployed(observer, cpu))
            complete = await observer.wait(timeout=self.args.timeout, need_available=not isolated)
            t_done = time.monotonic() - t0
            metrics_at_done = contender.metrics()
            requests_after = await asyncio.to_thread(self.cluster.operator_requests)
            peak = await rss.stop()
            cpu_s = cpu.stop()
            cpu_deployments = cpu_to_deployments.result() if cpu_to_deployments.done() else None
            cpu_to_deployments.cancel()
            metrics = contender.metrics()
            await observer.stop()
            contender.stop()
            if isolated:
                # Gone before the controller-manager wakes up: no rollouts of them to wait for.
                await self.kube.request(
                    "DELETE", DEPLOYMENT.path(namespace), resource="deployments"
                )
        finally:
            if isolated:
                self._pause_downstream(False)
        # Every scenario starts on a cluster as empty and as quiet as the first one's.
        cleanup = await delete_namespace(self.kube, namespace)
        quiet = await self.quiet_control_plane()
        log(
            f"{name}: namespace deleted in {cleanup:.0f} s, control plane quiet after {quiet:.0f} s"
        )

        dep_lat = [t - created[k] for k, t in observer.deployment_ok.items() if k in created]
        av_lat = [t - created[k] for k, t in observer.available.items() if k in created]
        t_dep = max(observer.deployment_ok.values()) - t0 if observer.deployment_ok else None
        t_av = max(observer.available.values()) - t0 if observer.available else None
        reconciles = _reconciles(name, metrics, n)
        result: dict[str, Any] = {
            "complete": complete,
            "n": n,
            "t_create": round(t_created, 3),
            "t_deployments": _r(t_dep),
            "t_available": _r(t_av) if len(observer.available) >= n else None,
            "t_waited": round(t_done, 3),
            "deployments_correct": len(observer.deployment_ok),
            "available": len(observer.available),
            "p50_deployment_ms": _r(percentile(dep_lat, 50) * 1000),
            "p99_deployment_ms": _r(percentile(dep_lat, 99) * 1000),
            "p50_available_ms": _r(percentile(av_lat, 50) * 1000),
            "p99_available_ms": _r(percentile(av_lat, 99) * 1000),
            "crs_per_s": _r(n / t_dep) if t_dep and complete else None,
            "reconciles": reconciles,
            "reconciles_per_s": _r(reconciles / t_dep) if t_dep and reconciles else None,
            "api_requests": requests_after["total"] - requests_before["total"],
            "api_requests_per_cr": _r((requests_after["total"] - requests_before["total"]) / n),
            "status_writes": sum(
                metric_sum(text, "mcop_status_writes_total", result="written")
                for text in metrics.values()
            )
            or None,
            "peak_rss_mb": peak,
            "cpu_s": cpu_s,
            "namespace_deleted_s": round(cleanup, 1),
            "cpu_s_to_deployments": cpu_deployments,
            "breakdown": {
                **_breakdown(metrics),
                "reconcile_workers": _workers(metrics_at_start, metrics_at_done, "reconcile"),
            },
            # Other work on the machine shows here: this is a 2-core machine shared with others.
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "latencies_deployment_s": [round(x, 4) for x in sorted(dep_lat)],
            "latencies_available_s": [round(x, 4) for x in sorted(av_lat)],
        }
        log(
            f"{name}: {'done' if complete else 'INCOMPLETE'} — deployments {result['t_deployments']}"
            f" s, available {result['t_available']} s, {result['api_requests_per_cr']} req/CR, "
            f"rss {peak}, cpu s {cpu_s}"
        )
        return result

    async def watcher_throughput(self, changes: int, crs: int = 100) -> dict[str, Any]:
        """The watcher alone: `changes` patches across `crs` CRs, until the stream holds all."""
        namespace = "bench-watcher"
        await create_namespace(self.kube, namespace)
        contender = self.contender(Pipeline, namespace)
        assert isinstance(contender, Pipeline)
        contender._service("watcher", "watcher", "--namespaces", namespace)
        await wait_service_ready(contender.ports["watcher"], timeout=60)
        nc = await nats.connect(self.cluster.layout.nats_url)
        js = nc.jetstream()
        filter_ = subjects.wildcard(subjects.EVENTS, "memcached", namespace)

        async def stored() -> int:
            info = await js.stream_info(EVENTS_STREAM, subjects_filter=filter_)
            return sum((info.state.subjects or {}).values())

        try:
            await create_crs(
                self.kube,
                [memcached(f"w-{i:03d}", namespace, size=0) for i in range(crs)],
                concurrency=self.args.create_concurrency,
            )
            deadline = time.monotonic() + 60
            base = await stored()
            while base < crs and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                base = await stored()
            sem = asyncio.Semaphore(self.args.create_concurrency)

            async def patch(i: int) -> None:
                async with sem:
                    await self.kube.request(
                        "PATCH",
                        MEMCACHED.path(namespace, f"w-{i % crs:03d}"),
                        body={"metadata": {"annotations": {"bench/change": str(i)}}},
                        content_type="application/merge-patch+json",
                        resource="memcacheds",
                    )

            t0 = time.monotonic()
            await asyncio.gather(*(patch(i) for i in range(changes)))
            t_api = time.monotonic() - t0
            deadline = time.monotonic() + 120
            count = base
            while time.monotonic() < deadline:
                count = await stored()
                if count >= base + changes:
                    break
                await asyncio.sleep(0.02)
            t_stream = time.monotonic() - t0
        finally:
            await nc.close()
            contender.stop()
        got = count - base
        result = {
            "changes": changes,
            "stored": got,
            "complete": got >= changes,
            "seconds": round(t_stream, 3),
            "events_per_s": round(got / t_stream, 1),
            "api_patches_per_s": round(changes / t_api, 1),
            "lag_after_last_patch_s": round(t_stream - t_api, 3),
        }
        log(f"watcher: {result}")
        return result

    def traced(self, otlp_port: int) -> Pipeline:
        contender = self.contender(
            Pipeline,
            "bench-pipeline-4-traced",
            workers=4,
            concurrency=self.args.concurrency,
            status_concurrency=self.args.status_concurrency,
        )
        assert isinstance(contender, Pipeline)
        contender.env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_TRACES_SAMPLER="always_on",
        )
        return contender

    async def warm_up(self, count: int = 50) -> None:
        """A fresh API server is slow on its first CRs and Deployments; no scenario should pay."""
        namespace = "bench-warmup"
        await create_namespace(self.kube, namespace)
        crs: list[JsonObject] = []
        await create_crs(
            self.kube,
            [memcached(f"warm-{i:03d}", namespace) for i in range(count)],
            concurrency=self.args.create_concurrency,
            on_created=crs.append,
        )
        sem = asyncio.Semaphore(self.args.create_concurrency)

        async def apply(cr: JsonObject) -> None:
            async with sem:
                desired = desired_deployment(Memcached.from_api(cr))
                await self.kube.apply(DEPLOYMENT, desired, field_manager="bench-warmup")

        await asyncio.gather(*(apply(cr) for cr in crs))
        await asyncio.sleep(3)
        await delete_namespace(self.kube, namespace)
        await self.quiet_control_plane()

    async def run(self) -> dict[str, Any]:
        a = self.args
        await self.warm_up()
        repetitions = []
        for rep in range(a.repeat):
            if a.repeat > 1:
                log(f"repetition {rep + 1} of {a.repeat}")
            repetitions.append(await self.contenders(suffix=f"-r{rep + 1}" if rep else ""))
        scenarios = median_runs(repetitions)
        results: dict[str, Any] = {"scenarios": scenarios}
        if a.repeat > 1:
            results["repetitions"] = repetitions
            results["ratios"] = ratio_spread(repetitions)
        scaling = scaling_summary(scenarios, repetitions, a.workers)
        if scaling:
            results["scaling"] = scaling
        if not a.skip_tracing and "pipeline-4" in scenarios:
            results["tracing"] = await self.tracing(scenarios)
        if not a.skip_watcher:
            results["watcher"] = await self.watcher_throughput(a.watcher_changes)
        return results

    async def contenders(self, *, suffix: str = "") -> dict[str, Any]:
        """One run of each contender, in the table's order. Each repetition uses namespaces of
        its own (``suffix``): the event stream still holds the previous repetition's objects
        under the old names, which a new watcher would first have to catch up with."""
        a = self.args
        scenarios: dict[str, Any] = {}
        if not a.skip_floor:
            floor = self.contender(
                FloorClient, f"bench-floor{suffix}", concurrency=a.floor_concurrency
            )
            scenarios["floor"] = await self.scenario("floor", floor)
        if not a.skip_kopf:
            kopf = self.contender(KopfPeer, f"bench-kopf{suffix}")
            scenarios["kopf"] = await self.scenario("kopf", kopf)
        for workers in a.workers:
            name = f"pipeline-{workers}"
            scenarios[name] = await self.scenario(
                name,
                self.contender(
                    Pipeline,
                    f"bench-{name}{suffix}",
                    workers=workers,
                    concurrency=a.concurrency,
                    status_concurrency=a.status_concurrency,
                    status=not a.scaling or a.with_downstream,
                ),
            )
        return scenarios

    async def tracing(self, scenarios: dict[str, Any]) -> dict[str, Any]:
        otlp_port = free_port()
        rec = self.supervisor.start(
            "otlp-receiver",
            [sys.executable, "-m", "bench.otlp", "--port", str(otlp_port)],
            cwd=REPO,
        )
        try:
            await wait_http_ok(otlp_port, "/count", timeout=30, alive=rec.alive)
            contender = self.traced(otlp_port)
            traced = await self.scenario("pipeline-4-traced", contender)
            scenarios["pipeline-4-traced"] = traced
            counts = json.loads(scrape(otlp_port, "/count") or "{}")
        finally:
            self.supervisor.stop("otlp-receiver")
        off = scenarios["pipeline-4"]
        return {
            "spans": counts.get("total", 0),
            "spans_by_service": counts.get("spans", {}),
            "ratio_available": _div(traced.get("t_available"), off.get("t_available")),
            "ratio_deployments": _div(traced.get("t_deployments"), off.get("t_deployments")),
        }

    async def rss_10k(self, count: int) -> dict[str, Any]:
        namespace = "bench-rss-10k"
        await create_namespace(self.kube, namespace)
        contender = self.contender(
            Pipeline, namespace, workers=1, concurrency=self.args.concurrency
        )
        await contender.start()
        rss = RssPoller(contender.pids(), interval=1.0)
        rss.start()
        observer = Observer(self.kube, namespace, count)
        await observer.start()
        t0 = time.monotonic()
        await create_crs(
            self.kube,
            [memcached(f"r-{i:05d}", namespace, size=0) for i in range(count)],
            concurrency=self.args.create_concurrency,
            on_created=observer.created,
        )
        complete = await observer.wait(timeout=self.args.timeout * 4, need_available=False)
        # Keep measuring a little after convergence: status refreshes and resync trail it.
        await asyncio.sleep(10)
        peak = await rss.stop()
        await observer.stop()
        contender.stop()
        return {
            "crs": count,
            "complete": complete,
            "seconds": round(time.monotonic() - t0, 1),
            "deployments_correct": len(observer.deployment_ok),
            "peak_rss_mb": peak,
        }


def scaling_summary(
    scenarios: dict[str, Any], repetitions: list[dict[str, Any]], workers: list[int]
) -> dict[str, Any] | None:
    """CRs/s per worker count (the median runs') and the speed-up over 1 worker: the median
    over the repetitions of each one's own ratio (ratios within one run are what a shared
    machine lets us compare). Keys are strings, as they read back from the JSON."""
    rates = {str(w): scenarios.get(f"pipeline-{w}", {}).get("crs_per_s") for w in workers}
    if not rates.get("1") or len(rates) < 2:
        return None
    runs = {
        str(w): [
            _div(
                rep.get(f"pipeline-{w}", {}).get("crs_per_s"),
                rep.get("pipeline-1", {}).get("crs_per_s"),
            )
            for rep in repetitions
        ]
        for w in workers
    }
    speedup = {
        w: round(statistics.median(xs), 3) if (xs := [x for x in r if x]) else None
        for w, r in runs.items()
    }
    return {
        "crs_per_s": rates,
        "speedup": speedup,
        "speedup_runs": runs,
        "speedup_1_to_2": speedup.get("2"),
        "speedup_1_to_4": speedup.get("4"),
    }


def median_runs(repetitions: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario, the repetition whose time to all Available is the median (a real run,
    so all of its figures belong together); the only one when there is one."""
    out: dict[str, Any] = {}
    for name in repetitions[0]:
        runs = sorted(
            (rep[name] for rep in repetitions if name in rep),
            # The scaling sweep does not wait for Available: its time to Deployments then.
            key=lambda r: r.get("t_available") or r.get("t_deployments") or float("inf"),
        )
        out[name] = runs[(len(runs) - 1) // 2]
    return out


def ratio_spread(repetitions: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Each pipeline scenario's ratios to the floor and to kopf, one per repetition: ratios
    within one repetition are what the noisy machine lets us compare."""
    spread: dict[str, dict[str, list[float]]] = {}
    for rep in repetitions:
        floor, kopf = rep.get("floor", {}), rep.get("kopf", {})
        for name, s in rep.items():
            if not name.startswith("pipeline"):
                continue
            ratios = spread.setdefault(name, {})
            pairs = {
                "floor_deployments": _div(s.get("t_deployments"), floor.get("t_deployments")),
                "floor_available": _div(s.get("t_available"), floor.get("t_available")),
                "kopf_available": _div(kopf.get("t_available"), s.get("t_available")),
            }
            for key, value in pairs.items():
                if value is not None:
                    ratios.setdefault(key, []).append(value)
    return spread


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or value != value else round(value, digits)


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _mean(metrics: dict[str, str], name: str, controller: str, label: str) -> float | None:
    total = sum(metric_sum(t, f"{name}_sum", **{label: controller}) for t in metrics.values())
    count = sum(metric_sum(t, f"{name}_count", **{label: controller}) for t in metrics.values())
    return round(total / count * 1000, 1) if count else None


def _breakdown(metrics: dict[str, str]) -> dict[str, Any]:
    """Where this system's time goes, from its own metrics (means in ms, counts)."""
    out: dict[str, Any] = {}
    for controller in ("reconcile", "status"):
        out[controller] = {
            "runs": sum(
                metric_sum(t, "controller_runtime_reconcile_total", controller=controller)
                for t in metrics.values()
            ),
            "mean_run_ms": _mean(
                metrics, "controller_runtime_reconcile_time_seconds", controller, "controller"
            ),
            "mean_queue_wait_ms": _mean(
                metrics, "workqueue_queue_duration_seconds", controller, "name"
            ),
            "lease_contention": sum(
                metric_sum(t, "mcop_lease_contention_total", controller=controller)
                for t in metrics.values()
            ),
            "superseded": sum(
                metric_sum(t, "mcop_workqueue_superseded_total", controller=controller)
                for t in metrics.values()
            ),
        }
    out["api_requests_by_service"] = {
        role: metric_sum(text, "mcop_kube_api_requests_total") for role, text in metrics.items()
    }
    out["api_requests_by_call"] = _by_labels(
        metrics, "mcop_kube_api_requests_total", "verb", "resource"
    )
    sums = _by_labels(metrics, "mcop_kube_api_request_duration_seconds_sum", "verb", "resource")
    counts = _by_labels(metrics, "mcop_kube_api_request_duration_seconds_count", "verb", "resource")
    out["api_mean_ms_by_call"] = {
        call: round(sums.get(call, 0.0) / n * 1000, 1) for call, n in counts.items() if n
    }
    out["status_refreshes"] = _by_labels(metrics, "mcop_status_writes_total", "result")
    out["pod_reads"] = _by_labels(metrics, "mcop_pod_reads_total", "source")
    return {k: v for k, v in out.items() if v}


def _workers(
    start: dict[str, str], done: dict[str, str], controller: str
) -> dict[str, dict[str, float | None]]:
    """Per worker process of ``controller``, from the first create until done: its runs, its
    mean wait from publication to delivery, for the lease, and to the handler's start (ms), the
    seconds spent in handlers (busy) and the slot-seconds it waited for a request (idle):
    where a request waits when adding workers adds nothing."""
    out: dict[str, dict[str, float | None]] = {}
    for role, text in sorted(done.items()):
        before = start.get(role, "")

        def delta(name: str, text: str = text, before: str = before) -> float:
            return metric_sum(text, name, controller=controller) - metric_sum(
                before, name, controller=controller
            )

        runs = delta("controller_runtime_reconcile_total")
        if not runs:
            continue
        row: dict[str, float | None] = {"runs": runs}
        for key, name in (
            ("delivery_ms", "mcop_workqueue_delivery_duration_seconds"),
            ("lease_ms", "mcop_workqueue_lease_wait_seconds"),
            ("queue_ms", "mcop_workqueue_queue_duration_seconds"),
        ):
            count = delta(f"{name}_count")
            row[key] = round(delta(f"{name}_sum") / count * 1000, 1) if count else None
        row["busy_s"] = round(delta("controller_runtime_reconcile_time_seconds_sum"), 2)
        row["idle_s"] = round(delta("mcop_workqueue_idle_seconds_total"), 2)
        out[role] = row
    return out


def _by_labels(metrics: dict[str, str], metric: str, *labels: str) -> dict[str, float]:
    """A counter's total over all processes, by the values of ``labels`` ("GET pods": 12)."""
    totals: dict[str, float] = {}
    for text in metrics.values():
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name != metric:
                    continue
                key = " ".join(sample.labels.get(label, "") for label in labels)
                totals[key] = totals.get(key, 0.0) + sample.value
    return {k: v for k, v in sorted(totals.items()) if v}


def _reconciles(name: str, metrics: dict[str, str], n: int) -> float | None:
    if name == "floor":
        return float(n)
    if name == "kopf":
        return metric_sum(
            metrics.get("kopf", ""), "bench_kopf_reconcile_total", handler="reconcile"
        )
    return sum(
        metric_sum(text, "controller_runtime_reconcile_total", controller="reconcile")
        for role, text in metrics.items()
        if role.startswith("reconciler")
    )


async def main_async(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix="mcop-bench-"))
    layout = Layout(state, base_port=free_port_block(), nodes=args.nodes)
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
            "nodes": args.nodes,
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
    p.add_argument("--latency-ms", type=float, default=0.0, help="API latency added by a proxy")
    p.add_argument("--create-concurrency", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8, help="reconciler --concurrency")
    p.add_argument(
        "--status-concurrency", type=int, default=8, help="status --concurrency (its default)"
    )
    p.add_argument("--floor-concurrency", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--nodes", type=int, default=4, help="fake kwok nodes")
    p.add_argument("--timeout", type=float, default=0, help="per scenario (default 120 + 0.5 N)")
    p.add_argument("--watcher-changes", type=int, default=5000)
    p.add_argument("--skip-kopf", action="store_true")
    p.add_argument("--skip-floor", action="store_true")
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
    if not args.timeout:
        args.timeout = 120 + 0.5 * args.n
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
