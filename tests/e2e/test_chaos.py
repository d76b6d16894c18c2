"""Issue 8, chaos: while CRs are created, reconcilers are SIGKILLed every ~2 s, a watcher is
killed and restarted, and nats-server and kube-apiserver are restarted once each; every CR still
converges to exactly one correct Deployment and Available=True, nothing is dead-lettered, every
CR has its creation event, and no process is left behind.

The reduced run uses a control plane of its own (chaos.run brings one up), because restarting
the API server and NATS would disturb the session cluster the other tests share. The chaos runs
also found duplicated ``added`` events; the second test reproduces that deterministically.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from chaos.run import run_chaos
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.events import codec as events
from tests.conftest import Cluster, free_port
from tests.support import Services, metric, read_stream, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_chaos_loses_duplicates_and_strands_nothing() -> None:
    report = run_chaos(n=60, duration=25, kill_every=2, converge_timeout=180)
    print("\n".join(report.lines()))
    assert report.kills >= 5
    assert report.restarts.count("watcher-1") == 1
    assert {"nats-server", "kube-apiserver"} <= set(report.restarts)
    assert report.lost == 0, f"not converged: {report.wrong_deployments}"
    assert report.deployments == report.n, "one Deployment per CR, none twice"
    assert report.stuck == 0
    assert report.missing_added_events == []
    assert report.dead_letters == 0
    assert report.leaked_pids == []
    # Duplicated `added` events (report.duplicate_added_events) happen in some runs; they are
    # asserted by the deterministic reproduction below rather than left to chance here.


def test_a_watcher_starting_while_another_publishes_adds_no_second_added_event(
    cluster: Cluster, service_procs: Services, namespace: str, tmp_path: Path
) -> None:
    # Watcher B reaches the API server through a proxy that delays each request by 3 s, so
    # the object is created and changed between B reading the stream and B's list.
    proxy_port = free_port()
    proxy = service_procs.supervisor.start(
        "slow-api-proxy",
        [
            sys.executable,
            "-m",
            "bench.proxy",
            "--port",
            str(proxy_port),
            "--upstream-port",
            str(cluster.layout.apiserver_port),
            "--latency-ms",
            "3000",
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        config = json.loads(Path(cluster.kubeconfig).read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy_port}"
        slow = tmp_path / "slow.kubeconfig"
        slow.write_text(json.dumps(config))

        service_procs.start("watcher", "--namespaces", namespace, name="watcher-a")
        wait_for(lambda: "watcher started" in service_procs.log("watcher-a"), timeout=60, what="A")
        b_port = free_port()
        service_procs.start(
            "watcher",
            "--namespaces",
            namespace,
            "--health-port",
            str(b_port),
            name="watcher-b",
            KUBECONFIG=str(slow),
        )
        wait_for(
            lambda: "known memcached objects" in service_procs.log("watcher-b"),
            timeout=60,
            what="B to read its known state from the stream",
        )
        cluster.apply_memcached(namespace, "raced", {"size": 1})
        cluster.kubectl("annotate", "mc", "-n", namespace, "raced", "example.com/changed=yes")
        filter_ = subjects.wildcard(subjects.EVENTS, "memcached", namespace)

        def added() -> list[str]:
            msgs = asyncio.run(read_stream(cluster.nats_url, filter_))
            decoded = [events.decode(m.headers, m.data) for m in msgs]
            return [e.id for e in decoded if e.change == "added"]

        wait_for(
            lambda: "listed memcacheds" in service_procs.log("watcher-b"),
            timeout=60,
            what="B's list through the slow proxy",
        )
        wait_for(lambda: added(), timeout=30, what="the added event")
        # B publishes what its list showed right after the list: wait until the stream has
        # confirmed it (stored, or dropped as one it already held).
        wait_for(
            lambda: (
                metric(b_port, "mcop_events_published_total", kind="memcached")
                + metric(b_port, "mcop_events_duplicates_total", kind="memcached")
            ),
            timeout=30,
            what="B's events of what it listed, confirmed",
        )
        assert len(added()) == 1, f"'added' stored more than once: {added()}"
    finally:
        service_procs.supervisor.stop(proxy.name)
