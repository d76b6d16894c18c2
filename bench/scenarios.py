"""The bench's scenarios: one contender timed from the first of N CR creates to every Deployment
correct and every CR Available, and the runs around it (warm-up, repetitions, tracing on, the
watcher alone, memory with 10,000 CRs). bench/run.py is the command; bench/figures.py turns the
contenders' metrics into the figures each scenario records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

import nats

from bench import versus_go
from bench.cluster import BenchCluster
from bench.contenders import REPO, Contender, FloorClient, GoPeer, KopfPeer, Pipeline
from bench.figures import (
    breakdown,
    median_runs,
    ratio_spread,
    reconcile_runs,
    rounded,
    scaling_summary,
    span_delta,
    tracing_summary,
    worker_rows,
)
from bench.harness import (
    Observer,
    create_crs,
    create_namespace,
    delete_namespace,
    free_port,
    memcached,
    metric_sum,
    percentile,
    scrape,
    wait_http_ok,
    wait_service_ready,
)
from bench.meters import CpuMeter, NatsTraffic, RssPoller
from deploy.local.processes import Supervisor
from memcached_operator.reconciler.desired import desired_deployment
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import EVENTS_STREAM, REQUESTS_STREAM
from memcached_operator.shared.kube.client import DEPLOYMENT, MEMCACHED, JsonObject, KubeClient


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
        self._otlp_port: int | None = None

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
        nc = await nats.connect(servers=self.cluster.layout.nats_url.split(","))
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
        traffic = NatsTraffic([monitor for _, monitor, _ in self.cluster.layout.nats_ports])
        await asyncio.to_thread(traffic.start)
        objs = [memcached(f"mc-{i:05d}", namespace, size=self.args.size) for i in range(n)]
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
            nats_traffic = await asyncio.to_thread(traffic.stop)
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
        obj_lat = [t - created[k] for k, t in observer.objects_ok.items() if k in created]
        t_obj = max(observer.objects_ok.values()) - t0 if len(observer.objects_ok) >= n else None
        t_av = max(observer.available.values()) - t0 if observer.available else None
        # The status's own part: from the Deployment saying Available to the CR saying so.
        status_lag = [
            t - observer.deployment_available[k]
            for k, t in observer.available.items()
            if k in observer.deployment_available
        ]
        deployments_available = observer.deployment_available.values()
        reconciles = reconcile_runs(name, metrics, n)
        result: dict[str, Any] = {
            "complete": complete,
            "n": n,
            "t_create": round(t_created, 3),
            "t_deployments": rounded(t_dep),
            "t_available": rounded(t_av) if len(observer.available) >= n else None,
            "t_waited": round(t_done, 3),
            "deployments_correct": len(observer.deployment_ok),
            # Every owned object as desired: Deployment, Service, and PDB when size >= 2.
            "t_objects": rounded(t_obj),
            "objects_correct": len(observer.objects_ok),
            "available": len(observer.available),
            "p50_deployment_ms": rounded(percentile(dep_lat, 50) * 1000),
            "p99_deployment_ms": rounded(percentile(dep_lat, 99) * 1000),
            "p50_objects_ms": rounded(percentile(obj_lat, 50) * 1000),
            "p99_objects_ms": rounded(percentile(obj_lat, 99) * 1000),
            "p50_available_ms": rounded(percentile(av_lat, 50) * 1000),
            "p99_available_ms": rounded(percentile(av_lat, 99) * 1000),
            "t_deployments_available": rounded(max(deployments_available) - t0)
            if len(observer.deployment_available) >= n
            else None,
            "p50_status_lag_ms": rounded(percentile(status_lag, 50) * 1000),
            "p99_status_lag_ms": rounded(percentile(status_lag, 99) * 1000),
            "crs_per_s": rounded(n / t_dep) if t_dep and complete else None,
            "reconciles": reconciles,
            "reconciles_per_s": rounded(reconciles / t_dep) if t_dep and reconciles else None,
            "api_requests": requests_after["total"] - requests_before["total"],
            "api_requests_per_cr": rounded(
                (requests_after["total"] - requests_before["total"]) / n
            ),
            "status_writes": sum(
                metric_sum(text, "mcop_status_writes_total", result="written")
                for text in metrics.values()
            )
            or None,
            "peak_rss_mb": peak,
            "cpu_s": cpu_s,
            "nats_msgs_per_cr": {
                "in": rounded(nats_traffic["in_msgs"] / n),
                "out": rounded(nats_traffic["out_msgs"] / n),
            },
            "nats_kb_per_cr": {
                "in": rounded(nats_traffic["in_bytes"] / n / 1024),
                "out": rounded(nats_traffic["out_bytes"] / n / 1024),
            },
            "namespace_deleted_s": round(cleanup, 1),
            "cpu_s_to_deployments": cpu_deployments,
            "breakdown": {
                **breakdown(metrics),
                "reconcile_workers": worker_rows(metrics_at_start, metrics_at_done, "reconcile"),
            },
            # Other work on the machine shows here: this is a 2-core machine shared with others.
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "latencies_deployment_s": [round(x, 4) for x in sorted(dep_lat)],
            "latencies_available_s": [round(x, 4) for x in sorted(av_lat)],
        }
        log(
            f"{name}: {'done' if complete else 'INCOMPLETE'} — deployments {result['t_deployments']}"
            f" s, all objects {result['t_objects']} s, available {result['t_available']} s, {result['api_requests_per_cr']} req/CR, "
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
        nc = await nats.connect(servers=self.cluster.layout.nats_url.split(","))
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

    def traced(self, otlp_port: int, suffix: str = "") -> Pipeline:
        contender = self.contender(
            Pipeline,
            f"bench-pipeline-4-traced{suffix}",
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
        traced = not a.skip_tracing and 4 in a.workers
        if traced:
            await self._start_otlp()
        try:
            for rep in range(a.repeat):
                if a.repeat > 1:
                    log(f"repetition {rep + 1} of {a.repeat}")
                repetitions.append(await self.contenders(suffix=f"-r{rep + 1}" if rep else ""))
        finally:
            if traced:
                self.supervisor.stop("otlp-receiver")
        scenarios = median_runs(repetitions)
        results: dict[str, Any] = {"scenarios": scenarios}
        if a.repeat > 1:
            results["repetitions"] = repetitions
            results["ratios"] = ratio_spread(repetitions)
        scaling = scaling_summary(scenarios, repetitions, a.workers)
        if scaling:
            results["scaling"] = scaling
        if traced:
            results["tracing"] = tracing_summary(repetitions)
        results["versus_go"] = versus_go.summary(repetitions)
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
        go_peers = [(w, 1) for w in a.go_workers] + [(max(a.go_workers), a.go_replicas)]
        for workers, replicas in () if a.skip_go_peer else dict.fromkeys(go_peers):
            name = f"go-{workers}" + (f"x{replicas}" if replicas > 1 else "")
            go = self.contender(GoPeer, f"bench-{name}{suffix}", workers=workers, replicas=replicas)
            scenarios[name] = await self.scenario(name, go)
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
        if self._otlp_port is not None and "pipeline-4" in scenarios:
            before = self._span_counts()
            traced = await self.scenario("pipeline-4-traced", self.traced(self._otlp_port, suffix))
            traced["spans"] = span_delta(before, self._span_counts(), a.n)
            scenarios["pipeline-4-traced"] = traced
        return scenarios

    async def _start_otlp(self) -> None:
        """The OTLP receiver the traced runs export to, for every repetition."""
        port = free_port()
        rec = self.supervisor.start(
            "otlp-receiver",
            [sys.executable, "-m", "bench.otlp", "--port", str(port)],
            cwd=REPO,
        )
        await wait_http_ok(port, "/count", timeout=30, alive=rec.alive)
        self._otlp_port = port

    def _span_counts(self) -> dict[str, Any]:
        assert self._otlp_port is not None
        return dict(json.loads(scrape(self._otlp_port, "/count") or "{}"))

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
