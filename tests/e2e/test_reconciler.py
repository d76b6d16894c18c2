"""Issue 4 acceptance: a fleet of reconciler processes converges Deployments, exclusively per
object, through crashes, with poison requests dead-lettered and the workers carrying on."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import time
from collections import defaultdict
from datetime import datetime, timedelta

import nats
import pytest

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import DEADLETTER_STREAM
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.shared.kube.client import MEMCACHED, KubeClient
from tests.conftest import Cluster
from tests.support import (
    Services,
    create_many,
    memcached_manifest,
    pending_requests,
    read_stream,
    wait_for,
)

pytestmark = pytest.mark.e2e

FAST = {"ACK_WAIT": "4", "LEASE_TTL": "4"}


def start_pipeline(services: Services, namespace: str, *, workers: int, **env: str) -> list[str]:
    services.start("watcher", "--namespaces", namespace, name="watcher")
    names = [f"reconciler-{i}" for i in range(workers)]
    for name in names:
        services.start("reconciler", name=name, **env)
    return names


def converged(cluster: Cluster, namespace: str, expected: int) -> list[str] | None:
    """Names of CRs whose Deployment is exactly as desired, if all `expected` are."""
    _, deps, good = cluster.deployments_as_desired(namespace)
    return good if len(good) == expected and len(deps) == expected else None


def outcomes(cluster: Cluster, namespace: str) -> list[Outcome]:
    filter_ = (
        f"{subjects.PREFIX}.{subjects.OUTCOMES}.reconcile.{subjects.encode_token(namespace)}.*"
    )
    return [Outcome.from_json(m.data) for m in asyncio.run(read_stream(cluster.nats_url, filter_))]


def dead_letters(cluster: Cluster, namespace: str) -> list:  # type: ignore[type-arg]
    filter_ = f"{subjects.PREFIX}.{subjects.DEADLETTER}.*.{subjects.encode_token(namespace)}.*"
    return asyncio.run(read_stream(cluster.nats_url, filter_, stream=DEADLETTER_STREAM))


def assert_no_overlap(results: list[Outcome]) -> None:
    by_key: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for o in results:
        by_key[o.key].append((o.time - timedelta(seconds=o.duration_seconds), o.time))
    for key, spans in by_key.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two reconciles of {key} overlapped: {spans}"


def test_four_workers_converge_300_crs_without_overlap(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    start_pipeline(service_procs, namespace, workers=4)
    asyncio.run(
        create_many(
            cluster.kubeconfig,
            [memcached_manifest(f"mc-{i:03d}", namespace, 1 + i % 3) for i in range(300)],
        )
    )
    wait_for(
        lambda: converged(cluster, namespace, 300), timeout=240, what="300 correct Deployments"
    )
    results = outcomes(cluster, namespace)
    assert {o.key for o in results} == {f"{namespace}/mc-{i:03d}" for i in range(300)}
    assert all(o.result == "success" for o in results)
    assert_no_overlap(results)
    # Work was shared: outcomes come from more than one worker's trace of processes is not
    # recorded in the outcome, but every worker logged reconciles.
    busy = [
        n
        for n in (f"reconciler-{i}" for i in range(4))
        if "applied deployment" in service_procs.log(n)
    ]
    assert len(busy) >= 2, "the fleet did not share the work"


def test_rapid_spec_changes_coalesce(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    start_pipeline(service_procs, namespace, workers=2)
    cluster.kubectl("apply", "-f", "-", input_=json.dumps(memcached_manifest("hot", namespace)))
    wait_for(lambda: converged(cluster, namespace, 1), timeout=60, what="first convergence")

    async def burst() -> None:
        kube = await KubeClient.connect(cluster.kubeconfig)
        try:
            for i in range(100):
                await kube.request(
                    "PATCH",
                    MEMCACHED.path(namespace, "hot"),
                    body={"spec": {"size": 1 + i % 7, "image": f"memcached:1.6.{i}"}},
                    content_type="application/merge-patch+json",
                    resource="memcacheds",
                )
        finally:
            await kube.close()

    before = len(outcomes(cluster, namespace))
    # The workers are paused while the changes arrive (SIGSTOP), as a busy fleet would be:
    # every change lands while the object's request still waits, and they coalesce.
    for name in ("reconciler-0", "reconciler-1"):
        os.kill(service_procs.supervisor.running(name).pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        asyncio.run(burst())
    finally:
        for name in ("reconciler-0", "reconciler-1"):
            os.kill(service_procs.supervisor.running(name).pid, signal.SIGCONT)  # type: ignore[union-attr]
    wait_for(
        lambda: (
            (d := cluster.kubectl_json("get", "deployment", "-n", namespace, "hot"))
            and d["spec"]["template"]["spec"]["containers"][0]["image"] == "memcached:1.6.99"
            and d["spec"]["replicas"] == 1 + 99 % 7
        ),
        timeout=60,
        what="the Deployment to match the last spec",
    )
    # Every request for the object is done (acked, so gone from the work-queue stream) and the
    # run of the last spec has published its outcome: no run can still be on its way.
    generation = cluster.get_mc(namespace, "hot")["metadata"]["generation"]
    wait_for(
        lambda: (
            asyncio.run(pending_requests(cluster.nats_url, "reconcile", namespace)) == 0
            and any(o.generation == generation for o in outcomes(cluster, namespace))
        ),
        timeout=60,
        what="the requests drained and the outcome of the last spec",
    )
    runs = len(outcomes(cluster, namespace)) - before
    print(f"100 spec changes -> {runs} reconciles")
    assert 1 <= runs <= 5, f"{runs} reconciles for 100 rapid changes: requests did not coalesce"
    assert_no_overlap(outcomes(cluster, namespace))


def sigkill(services: Services, name: str) -> tuple[int, int]:
    """SIGKILL the running process ``name`` and reap it: its pid and exit code."""
    rec = services.supervisor.running(name)
    assert rec is not None, f"{name} was not running when its turn to be killed came"
    os.kill(rec.pid, signal.SIGKILL)
    _, status = os.waitpid(rec.pid, 0)  # the services are children of this process
    return rec.pid, os.waitstatus_to_exitcode(status)


def test_sigkill_workers_during_200_cr_run(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    workers = start_pipeline(service_procs, namespace, workers=3, **FAST)
    rng = random.Random(7)
    killed: list[tuple[int, int]] = []  # (pid, exit code) of each worker killed
    # CRs arrive in waves while a random worker is SIGKILLed (and restarted) every ~2 s, so
    # kills land in the middle of reconciles, not after the run.
    for wave in range(5):
        objs = [memcached_manifest(f"k-{wave}-{i:02d}", namespace, 2) for i in range(40)]
        asyncio.run(create_many(cluster.kubeconfig, objs))
        for _ in range(2):
            # The scenario itself: a random moment of the wave, not a wait for a condition.
            time.sleep(rng.uniform(0.2, 1.0))
            victim = rng.choice(workers)
            killed.append(sigkill(service_procs, victim))
            service_procs.stop(victim)
            service_procs.start("reconciler", name=victim, **FAST)
    # Ten different processes died of the SIGKILL itself (a worker that had already exited, or
    # was never restarted, would show another exit code or the same pid twice)...
    assert [code for _, code in killed] == [-signal.SIGKILL] * 10, killed
    assert len({pid for pid, _ in killed}) == 10, killed
    wait_for(lambda: converged(cluster, namespace, 200), timeout=120, what="all 200 to converge")
    # ... and each worker runs again, as a process none of the kills hit.
    for name in workers:
        rec = service_procs.supervisor.running(name)
        assert rec is not None, f"{name} is not running after its restarts"
        assert rec.pid not in {pid for pid, _ in killed}
    assert dead_letters(cluster, namespace) == []
    assert_no_overlap(outcomes(cluster, namespace))


def test_drift_is_corrected_and_deleting_the_cr_collects_the_deployment(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    start_pipeline(service_procs, namespace, workers=1)
    cluster.kubectl(
        "apply", "-f", "-", input_=json.dumps(memcached_manifest("drift", namespace, 2))
    )
    wait_for(lambda: converged(cluster, namespace, 1), timeout=60, what="convergence")
    uid = cluster.kubectl_json("get", "deployment", "-n", namespace, "drift")["metadata"]["uid"]

    cluster.kubectl("delete", "deployment", "-n", namespace, "drift")
    wait_for(
        lambda: (
            (
                d := cluster.kubectl(
                    "get", "deployment", "-n", namespace, "drift", "-o", "json", check=False
                )
            )
            and d.returncode == 0
            and json.loads(d.stdout)["metadata"]["uid"] != uid
        ),
        timeout=60,
        what="the deleted Deployment to be recreated",
    )
    cluster.kubectl("scale", "deployment", "-n", namespace, "drift", "--replicas=7")
    wait_for(
        lambda: (
            cluster.kubectl_json("get", "deployment", "-n", namespace, "drift")["spec"]["replicas"]
            == 2
        ),
        timeout=60,
        what="the edited replicas to be restored",
    )
    cluster.kubectl("delete", "mc", "-n", namespace, "drift")
    wait_for(
        lambda: (
            cluster.kubectl("get", "deployment", "-n", namespace, "drift", check=False).returncode
            != 0
        ),
        timeout=60,
        what="the garbage collector to delete the Deployment",
    )


async def _publish_raw(url: str, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(subject, data, headers=headers)
    finally:
        await nc.close()


def test_poison_requests_are_dead_lettered_and_the_worker_carries_on(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    start_pipeline(service_procs, namespace, workers=1)
    origin = {"Mcop-Origin": "test"}
    poison = {
        "garbage": (b"\x00\xffnot json", origin, "MalformedBody"),
        "noheaders": (b"", None, "MissingHeader"),
        "huge": (b"{" + b" " * (1024 * 1024) + b"}", origin, "RequestTooLarge"),
    }
    for name, (data, headers, _) in poison.items():
        subject = subjects.subject(
            subjects.REQUESTS, "reconcile", subjects.ObjectKey(namespace, name)
        )
        asyncio.run(_publish_raw(cluster.nats_url, subject, data, headers))
    letters = wait_for(
        lambda: (d := dead_letters(cluster, namespace)) and len(d) >= 3 and d,
        timeout=60,
        what="three dead letters",
    )
    reasons = {
        subjects.parse(m.subject).key.name: m.headers.get("Mcop-Deadletter-Reason") for m in letters
    }
    assert reasons == {name: reason for name, (_, _, reason) in poison.items()}
    log = service_procs.log("reconciler-0")
    for _, (_, _, reason) in poison.items():
        assert reason in log, f"{reason} not explained in the worker's log"
    # The worker is still up and still works.
    assert service_procs.supervisor.running("reconciler-0") is not None
    cluster.kubectl("apply", "-f", "-", input_=json.dumps(memcached_manifest("after", namespace)))
    wait_for(lambda: converged(cluster, namespace, 1), timeout=60, what="a normal CR to converge")
