"""`python -m chaos.run`: an N-CR run of the whole pipeline while its parts are killed.

On a local cluster of its own (or a given one), it starts 2 watchers, 3 reconcilers and 1
status service, creates the CRs in waves and meanwhile SIGKILLs a random reconciler every few
seconds (restarting it at once), SIGKILLs and restarts one watcher, and restarts nats-server and
kube-apiserver once each, in place, through the local Supervisor. Then it checks what a user
would: every CR has exactly one Deployment, as desired and controlled by it, and reports
Available=True; the event stream holds exactly one ``added`` event per CR; the dead-letter stream
holds nothing of this run; and after teardown no process it started is alive.

Cluster mode (``--nats-nodes 3``): NATS is a JetStream cluster of three nodes with every stream
at three replicas; instead of restarting the one server, NATS nodes are killed, hung and their
leaders killed one at a time (chaos/nats_faults.py), every CR's size keeps changing meanwhile,
and two status replicas run, of whose writes of one CR the API server's audit log shows it
never accepted two at once (chaos/status_writes.py). The report lists every fault with its time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.harness import (
    REPO,
    create_crs,
    create_namespace,
    free_port,
    memcached,
    nats_env,
    process_env,
    service_command,
)
from chaos.nats_faults import NatsFaults
from chaos.report import Report
from chaos.status_writes import overlapping, status_write_spans
from deploy.local import cluster as local_cluster
from deploy.local import nats as local_nats
from deploy.local.layout import Layout, block_size, free_base_port
from deploy.local.processes import Record, Supervisor
from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api.contract import owned_by
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.replay import replay
from memcached_operator.shared.bus.streams import DEADLETTER_STREAM, EVENTS_STREAM, REQUESTS_STREAM
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.kube.client import DEPLOYMENT, MEMCACHED, KubeClient
from memcached_operator.shared.workqueue import deadletter

# Short enough that a killed worker's request moves on within seconds.
FAST = {"ACK_WAIT": "5", "LEASE_TTL": "5"}


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Chaos:
    def __init__(self, layout: Layout, *, n: int, duration: float, kill_every: float) -> None:
        self.layout = layout
        self.n = n
        self.duration = duration
        self.kill_every = kill_every
        self.cluster = Supervisor(layout.state_dir)
        self.services = Supervisor(layout.state_dir / "chaos")
        self.namespace = f"chaos-{random.randrange(16**5):05x}"
        self.pids: set[int] = set()
        self.report = Report(n=n, namespace=self.namespace, nats_nodes=layout.nats_nodes)
        self.rng = random.Random(os.getpid())
        self.clustered = layout.nats_nodes > 1
        self.status_replicas = 2 if self.clustered else 1
        self.report.status_replicas = self.status_replicas
        self.nats_faults = NatsFaults(layout, rng=self.rng, log=log)
        self.nats_kill_every = 10.0

    # -- processes ---------------------------------------------------------------------------

    def _track(self, rec: Record | None) -> None:
        if rec is not None:
            self.pids.add(rec.pid)

    def start_service(self, name: str, service: str, *args: str) -> None:
        env = process_env(self.layout.kubeconfig, **FAST, **nats_env(self.layout, service))
        argv = service_command(service, free_port(), *args)
        self._track(self.services.start(name, argv, env=env, cwd=REPO))

    def kill_and_restart(self, name: str, service: str, *args: str) -> None:
        self.services.kill(name)
        self.services.stop(name)
        self.start_service(name, service, *args)

    def restart_component(self, component: str) -> None:
        """Stop one control-plane component and start it again with the same command line."""
        rec = self.cluster.get(component)
        if rec is None:
            raise RuntimeError(f"{component} is not recorded in {self.layout.state_dir}")
        self.cluster.stop(component)
        if component == local_nats.NAME:
            new = local_nats.start(
                self.cluster, port=self.layout.nats_port, monitor_port=self.layout.nats_monitor_port
            )
        else:
            new = self.cluster.start(component, rec.argv)
        self._track(new)
        self.report.restarts.append(component)

    def wait_apiserver(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                local_cluster.kubectl(self.layout, "get", "--raw", "/readyz")
                return
            except RuntimeError:
                time.sleep(0.5)
        raise TimeoutError("kube-apiserver did not come back")

    def stop_all(self) -> None:
        for rec in self.services.records():
            self.services.stop(rec.name, timeout=35)

    # -- the run -----------------------------------------------------------------------------

    async def chaos(self, started: float) -> None:
        watcher_at = self.duration * 0.25
        nats_at = self.duration * 0.45
        apiserver_at = self.duration * 0.65
        done: set[str] = set()
        next_kill = started + self.kill_every
        while time.monotonic() - started < self.duration:
            await asyncio.sleep(0.2)
            elapsed = time.monotonic() - started
            if time.monotonic() >= next_kill:
                victim = self.rng.choice([f"reconciler-{i}" for i in range(3)])
                await asyncio.to_thread(
                    self.kill_and_restart, victim, "reconciler", "--concurrency", "8"
                )
                self.report.kills += 1
                next_kill = time.monotonic() + self.kill_every * self.rng.uniform(0.6, 1.4)
            if elapsed >= watcher_at and "watcher" not in done:
                done.add("watcher")
                log("SIGKILL and restart watcher-1")
                await asyncio.to_thread(
                    self.kill_and_restart, "watcher-1", "watcher", "--namespaces", self.namespace
                )
                self.report.restarts.append("watcher-1")
            if elapsed >= nats_at and "nats" not in done and not self.clustered:
                done.add("nats")
                log("restart nats-server")
                await asyncio.to_thread(self.restart_component, local_nats.NAME)
            if elapsed >= apiserver_at and "apiserver" not in done:
                done.add("apiserver")
                log("restart kube-apiserver")
                await asyncio.to_thread(self.restart_component, "kube-apiserver")
                await asyncio.to_thread(self.wait_apiserver)

    async def create_in_waves(self, kube: KubeClient, waves: int = 5) -> None:
        names = [f"c-{i:04d}" for i in range(self.n)]
        per_wave = max(1, -(-self.n // waves))
        for start in range(0, self.n, per_wave):
            batch = [memcached(name, self.namespace) for name in names[start : start + per_wave]]
            for attempt in range(120):
                try:
                    # After a failure (the API server may be restarting), only what is missing.
                    existing = await self._names(kube) if attempt else set()
                    todo = [o for o in batch if o["metadata"]["name"] not in existing]
                    await create_crs(kube, todo, concurrency=16)
                    break
                except Exception as err:
                    if attempt == 119:
                        raise
                    log(f"creating CRs failed ({type(err).__name__}); retrying")
                    await asyncio.sleep(1)
            await asyncio.sleep(self.duration / (waves + 1))

    async def _names(self, kube: KubeClient) -> set[str]:
        items, _ = await kube.list(MEMCACHED, namespace=self.namespace)
        return {o["metadata"]["name"] for o in items}

    async def converged(self, kube: KubeClient) -> bool:
        crs, _ = await kube.list(MEMCACHED, namespace=self.namespace)
        deps, _ = await kube.list(DEPLOYMENT, namespace=self.namespace)
        # Items of a list carry no apiVersion and kind, which the desired object names.
        by_name = {
            d["metadata"]["name"]: {"apiVersion": "apps/v1", "kind": "Deployment", **d}
            for d in deps
        }
        good = available = 0
        wrong: list[str] = []
        for cr in crs:
            name = cr["metadata"]["name"]
            dep = by_name.get(name)
            if dep is not None:
                if owned_by(dep, cr["metadata"]["uid"]) and matches(
                    dep, desired_deployment(Memcached.from_api(cr))
                ):
                    good += 1
                else:
                    wrong.append(name)
            status = cr.get("status") or {}
            conds = status.get("conditions") or []
            # The status matches the Deployment: this generation, all its replicas ready.
            ready = ((dep or {}).get("status") or {}).get("readyReplicas") or 0
            if (
                any(c.get("type") == "Available" and c.get("status") == "True" for c in conds)
                and status.get("observedGeneration") == cr["metadata"].get("generation")
                and status.get("readyReplicas") == ready == cr["spec"].get("size", 1)
            ):
                available += 1
        r = self.report
        r.converged, r.available, r.deployments, r.wrong_deployments = (
            good,
            available,
            len(deps),
            wrong,
        )
        return len(crs) == self.n and good == self.n and available == self.n

    async def check_streams(self) -> None:
        nc = await nats.connect(servers=self.layout.nats_url.split(","), connect_timeout=10)
        try:
            js = nc.jetstream()
            added: Counter[str] = Counter()
            ids: dict[str, list[str]] = {}
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, headers_only=True)
            filter_ = subjects.wildcard(subjects.EVENTS, "memcached", self.namespace)
            async for msg in replay(js, filter_, stream=EVENTS_STREAM, config=config):
                if msg is None:
                    continue
                headers = msg.headers or {}
                if events.decode_value(headers.get("ce-type", "")).endswith(".added"):
                    name = subjects.parse(msg.subject).key.name
                    added[name] += 1
                    ids.setdefault(name, []).append(
                        f"seq {msg.metadata.sequence.stream} id "
                        f"{events.decode_value(headers.get('ce-id', ''))} at "
                        f"{events.decode_value(headers.get('ce-time', ''))}"
                    )
            names = [f"c-{i:04d}" for i in range(self.n)]
            self.report.missing_added_events = [n for n in names if not added[n]]
            self.report.duplicate_added_events = [n for n, c in added.items() if c > 1]
            self.report.duplicate_details = {n: ids[n] for n in self.report.duplicate_added_events}
            dl_filter = f"{subjects.PREFIX}.{subjects.DEADLETTER}.*.{subjects.encode_token(self.namespace)}.*"
            info = await js.stream_info(DEADLETTER_STREAM, subjects_filter=dl_filter)
            self.report.dead_letters = sum((info.state.subjects or {}).values())
            for subject in sorted(info.state.subjects or {}):
                letter = await js.get_last_msg(DEADLETTER_STREAM, subject)
                found = letter.headers or {}
                self.report.dead_letter_details.append(
                    f"{subject}: {found.get(deadletter.DL_REASON, '?')} after "
                    f"{found.get(deadletter.DL_DELIVERIES, '?')} deliveries, worker "
                    f"{found.get(deadletter.DL_WORKER, '?')}: {found.get(deadletter.DL_ERROR, '')}"
                )
            consumer = await js.consumer_info(REQUESTS_STREAM, "mcop-reconcile")
            self.report.deliveries = consumer.delivered.consumer_seq
        finally:
            await nc.close()

    async def run(self, *, converge_timeout: float) -> Report:
        kube = await KubeClient.connect(str(self.layout.kubeconfig))
        try:
            await create_namespace(kube, self.namespace)
            for i in range(2):
                self.start_service(f"watcher-{i}", "watcher", "--namespaces", self.namespace)
            for i in range(3):
                self.start_service(f"reconciler-{i}", "reconciler", "--concurrency", "8")
            for i in range(self.status_replicas):
                name = f"status-{i}" if self.clustered else "status"
                self.start_service(name, "status", "--concurrency", "16")
            await asyncio.sleep(3)
            started = time.monotonic()
            log(f"creating {self.n} CRs in {self.namespace} while the chaos runs")
            parts = [self.create_in_waves(kube), self.chaos(started)]
            if self.clustered:
                parts.append(
                    self.nats_faults.run(duration=self.duration, kill_every=self.nats_kill_every)
                )
                parts.append(self.change_specs(kube, started))
            await asyncio.gather(*parts)
            self.report.faults = [f.line() for f in self.nats_faults.faults]
            log("chaos over; waiting for convergence")
            deadline = time.monotonic() + converge_timeout
            while time.monotonic() < deadline:
                try:
                    if await self.converged(kube):
                        self.report.seconds_to_converge = round(time.monotonic() - started, 1)
                        break
                except Exception as err:
                    log(f"checking convergence failed ({err}); retrying")
                await asyncio.sleep(1)
            await self.check_streams()
            spans = status_write_spans(self.layout.state_dir / "logs" / "audit.log", self.namespace)
            self.report.status_writes = sum(len(w) for w in spans.values())
            self.report.overlapping_status_writes = overlapping(spans)
            refused = status_write_spans(
                self.layout.state_dir / "logs" / "audit.log", self.namespace, refused=True
            )
            self.report.refused_status_writes = sum(len(w) for w in refused.values())
        finally:
            await kube.close()
            await asyncio.to_thread(self.stop_all)
        return self.report

    async def change_specs(self, kube: KubeClient, started: float) -> None:
        """Keep changing CRs' sizes (1 to 3) while the chaos runs: reads right after a change,
        on whichever replica answers, must see it."""
        while time.monotonic() - started < self.duration:
            await asyncio.sleep(0.25)
            name = f"c-{self.rng.randrange(self.n):04d}"
            body = {"spec": {"size": self.rng.randint(1, 3)}}
            try:
                await kube.request(
                    "PATCH",
                    MEMCACHED.path(self.namespace, name),
                    body=body,
                    resource="memcacheds",
                    content_type="application/merge-patch+json",
                )
                self.report.spec_changes += 1
            except Exception as err:
                log(f"spec change of {name} failed ({type(err).__name__}); going on")

    def check_leaks(self, cluster_pids: set[int]) -> None:
        """Every process this run started (services, restarted and original components)."""
        time.sleep(0.5)
        self.report.leaked_pids = sorted(p for p in self.pids | cluster_pids if _alive(p))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run_chaos(
    *,
    n: int,
    duration: float,
    kill_every: float = 3.0,
    converge_timeout: float = 240.0,
    state_dir: Path | None = None,
    nats_nodes: int = 1,
    nats_kill_every: float = 10.0,
) -> Report:
    """Bring up a cluster of its own, run the chaos, tear everything down, and report."""
    own = state_dir is None
    state = state_dir or Path(tempfile.mkdtemp(prefix="mcop-chaos-"))
    layout = Layout(
        state, base_port=free_base_port(block_size(nats_nodes)), nodes=2, nats_nodes=nats_nodes
    )
    chaos: Chaos | None = None
    cluster_pids: set[int] = set()
    try:
        local_cluster.up(layout)
        cluster_pids = {r.pid for r in Supervisor(state).records()}
        chaos = Chaos(layout, n=n, duration=duration, kill_every=kill_every)
        chaos.nats_kill_every = nats_kill_every
        asyncio.run(chaos.run(converge_timeout=converge_timeout))
    finally:
        if chaos is not None:
            chaos.stop_all()
        local_cluster.down(layout)
        if chaos is not None:
            chaos.check_leaks(cluster_pids)
        if own:
            shutil.rmtree(state, ignore_errors=True)
    return chaos.report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__)
    p.add_argument("--n", "--crs", dest="n", type=int, default=500, help="CRs to create")
    p.add_argument(
        "--nats-nodes", type=int, choices=[1, 3], default=1, help="3: cluster mode (see above)"
    )
    p.add_argument(
        "--nats-kill-every", type=float, default=10.0, help="cluster mode: seconds between kills"
    )
    p.add_argument("--report", type=Path, help="also write the report to this file")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    p.add_argument("--kill-every", type=float, default=3.0, help="seconds between reconciler kills")
    p.add_argument("--converge-timeout", type=float, default=300.0)
    p.add_argument(
        "--state-dir",
        type=Path,
        help="keep the cluster's state and every process's log here (default: a temporary "
        "directory, removed at the end)",
    )
    args = p.parse_args(argv)
    report = run_chaos(
        n=args.n,
        duration=args.duration,
        kill_every=args.kill_every,
        converge_timeout=args.converge_timeout,
        nats_nodes=args.nats_nodes,
        nats_kill_every=args.nats_kill_every,
        state_dir=args.state_dir,
    )
    print("\n".join(report.lines()))
    if args.report is not None:
        args.report.write_text("\n".join(report.lines()) + "\n")
    return 0 if report.ok else 1


def summary(report: Report) -> dict[str, Any]:
    return {
        "lost": report.lost,
        "duplicated": report.duplicated,
        "stuck": report.stuck,
        "kills": report.kills,
        "restarts": report.restarts,
        "deliveries": report.deliveries,
        "seconds_to_converge": report.seconds_to_converge,
    }


if __name__ == "__main__":
    sys.exit(main())
