"""Issue 8, bad input: everything a user or a broken client can throw at the pipeline ends as a
clear error, a condition or a dead-lettered message, with no lost and no duplicated work.

The corpus runs against the real services (watcher, reconciler, status as processes), the real
API server and the real nats-server: malformed requests and CloudEvents, oversized payloads,
CR fields of the wrong type, huge annotations, names at the length limits and with every
character Kubernetes allows, unicode in labels and annotations, and a NATS restart while the
watcher publishes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections import Counter
from typing import Any

import nats
import pytest

from services.reconciler.desired import desired_deployment, label_value, matches
from shared import events, subjects
from shared.kube import MEMCACHED, KubeClient
from shared.models import Memcached
from shared.streams import DEADLETTER_STREAM
from tests.conftest import Cluster
from tests.support import Services, read_stream, wait_for

pytestmark = pytest.mark.integration

ORIGIN = {"Mcop-Origin": "test:bad-input"}


def cr(name: str, namespace: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"size": 1},
    }


def pipeline(services: Services, namespaces: str, *, only_watcher: bool = False) -> None:
    """Start the services and wait until each has its streams and consumers in place."""
    started = {"watcher": "watcher started"}
    services.start("watcher", "--namespaces", namespaces, name="watcher")
    if not only_watcher:
        services.start("reconciler", name="reconciler")
        services.start("status", name="status")
        started.update(reconciler="reconciler started", status="status service started")
    for name, line in started.items():
        wait_for(lambda n=name, s=line: s in services.log(n), timeout=60, what=f"{name} up")


def apply(
    cluster: Cluster, obj: dict[str, Any], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--server-side", "-f", "-", input_=json.dumps(obj), check=check)


def converged(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The CR when its Deployment is as desired and it reports Available=True, else None."""
    got = cluster.kubectl("get", "mc", "-n", namespace, name, "-o", "json", check=False)
    dep = cluster.kubectl("get", "deployment", "-n", namespace, name, "-o", "json", check=False)
    if got.returncode or dep.returncode:
        return None
    obj = json.loads(got.stdout)
    if not matches(json.loads(dep.stdout), desired_deployment(Memcached.from_api(obj))):
        return None
    conds = (obj.get("status") or {}).get("conditions") or []
    ok = any(c["type"] == "Available" and c["status"] == "True" for c in conds)
    return obj if ok else None


def added_events(cluster: Cluster, namespace: str) -> list[events.Event]:
    filter_ = subjects.wildcard(subjects.EVENTS, "memcached", namespace)
    decoded = [
        events.decode(m.headers, m.data)
        for m in asyncio.run(read_stream(cluster.nats_url, filter_))
    ]
    return [e for e in decoded if e.change == "added"]


async def _publish(url: str, items: list[tuple[str, bytes, dict[str, str] | None]]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for subject, data, headers in items:
            await js.publish(subject, data, headers=headers)
    finally:
        await nc.close()


def dead_letters_from(cluster: Cluster, subjects_sent: set[str]) -> dict[str, list[str]]:
    """Dead-letter reasons per original subject, for the subjects this test sent."""
    letters = asyncio.run(
        read_stream(
            cluster.nats_url, f"{subjects.PREFIX}.{subjects.DEADLETTER}.>", stream=DEADLETTER_STREAM
        )
    )
    out: dict[str, list[str]] = {}
    for m in letters:
        original = m.headers.get("Mcop-Deadletter-Subject", "")
        if original in subjects_sent:
            out.setdefault(original, []).append(m.headers.get("Mcop-Deadletter-Reason", ""))
    return out


def test_malformed_requests_are_dead_lettered_once_and_the_workers_carry_on(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    pipeline(service_procs, namespace)
    ns = subjects.encode_token(namespace)
    poison: dict[str, tuple[bytes, dict[str, str] | None, str]] = {}
    for controller in ("reconcile", "status"):
        base = f"{subjects.PREFIX}.{subjects.REQUESTS}.{controller}.{ns}"
        poison.update(
            {
                f"{base}.garbage": (b"\x00\xff\xfe not json", ORIGIN, "MalformedBody"),
                f"{base}.array": (b"[1, 2, 3]", ORIGIN, "MalformedBody"),
                f"{base}.latin1": (
                    b'{"k": "\xe9"}',  # Latin-1, not UTF-8
                    ORIGIN,
                    "MalformedBody",
                ),
                f"{base}.noorigin": (b"", None, "MissingHeader"),
                f"{base}.large": (b'{"pad": "' + b"x" * 200_000 + b'"}', ORIGIN, "RequestTooLarge"),
                # '~ZZ' is no escape the subject scheme ever produces.
                f"{base}.bad~ZZescape": (b"", ORIGIN, "UnparsableSubject"),
                # Six tokens: not a subject of the scheme at all.
                f"{base}.too.many": (b"", ORIGIN, "UnparsableSubject"),
            }
        )
    asyncio.run(_publish(cluster.nats_url, [(s, d, h) for s, (d, h, _) in poison.items()]))
    letters = wait_for(
        lambda: (
            (got := dead_letters_from(cluster, set(poison))) and len(got) == len(poison) and got
        ),
        timeout=60,
        what="every poison request in the dead-letter stream",
    )
    assert {s: reasons for s, reasons in letters.items()} == {
        s: [reason] for s, (_, _, reason) in poison.items()
    }, "each poison request is dead-lettered exactly once, with its reason"
    for name in ("reconciler", "status"):
        assert service_procs.supervisor.running(name) is not None, f"{name} died"
    # No lost work: a real CR still converges afterwards.
    apply(cluster, cr("after-poison", namespace))
    wait_for(lambda: converged(cluster, namespace, "after-poison"), timeout=90, what="convergence")


def test_a_malformed_outcome_is_ignored_with_a_warning_and_the_status_stays_right(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    pipeline(service_procs, namespace)
    apply(cluster, cr("victim", namespace))
    wait_for(lambda: converged(cluster, namespace, "victim"), timeout=90, what="convergence")
    key = subjects.ObjectKey(namespace, "victim")
    outcome_subject = subjects.subject(subjects.OUTCOMES, "reconcile", key)
    request_subject = subjects.subject(subjects.REQUESTS, "status", key)
    asyncio.run(
        _publish(
            cluster.nats_url,
            [
                (outcome_subject, b'{"result": "exploded", "key": 42}', {"ce-specversion": "1.0"}),
                (request_subject, b"", ORIGIN),
            ],
        )
    )
    wait_for(
        lambda: "malformed outcome" in service_procs.log("status"),
        timeout=30,
        what="the status service to report the malformed outcome",
    )
    assert converged(cluster, namespace, "victim"), "a bad outcome must not break the status"
    assert service_procs.supervisor.running("status") is not None


def test_audit_reports_a_malformed_event_instead_of_dropping_it(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    pipeline(service_procs, namespace, only_watcher=True)
    apply(cluster, cr("real", namespace))
    wait_for(lambda: added_events(cluster, namespace), timeout=30, what="the real CR's event")
    junk = subjects.subject(subjects.EVENTS, "memcached", subjects.ObjectKey(namespace, "junk"))
    asyncio.run(_publish(cluster.nats_url, [(junk, b"\x00 not json", {"ce-specversion": "1.0"})]))
    proc = cluster.audit("-o", "json", "--from-start", "--namespace", namespace)
    assert proc.returncode == 0, proc.stderr
    names = [json.loads(line)["name"] for line in proc.stdout.splitlines() if line.strip()]
    assert "real" in names, "the good events are still printed"
    assert "junk" in proc.stdout + proc.stderr, "the malformed event is reported, not dropped"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"size": "three"}, "spec.size"),
        ({"size": -1}, "spec.size"),
        ({"size": 1001}, "spec.size"),
        ({"size": 1.5}, "spec.size"),
        ({"image": ""}, "spec.image"),
        ({"image": "   "}, "image must not be blank"),
        ({"image": ["memcached"]}, "spec.image"),
        ({"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory"),
        (
            {"resources": {"limits": {"memory": "1Mi"}, "requests": {"memory": "2Mi"}}},
            "resources.limits.memory must not be less than resources.requests.memory",
        ),
        ({"resources": "big"}, "spec.resources"),
    ],
)
def test_fields_of_the_wrong_type_are_rejected_with_a_message(
    cluster: Cluster, namespace: str, spec: dict[str, Any], message: str
) -> None:
    obj = cr("typed", namespace)
    obj["spec"] = spec
    proc = apply(cluster, obj, check=False)
    assert proc.returncode != 0, f"the API server accepted {spec}"
    assert message in proc.stderr, proc.stderr
    assert cluster.kubectl("get", "mc", "-n", namespace, "typed", check=False).returncode != 0


def test_huge_annotations_are_rejected_or_carried_whole(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    pipeline(service_procs, namespace)
    too_big = cr("too-big", namespace, annotations={"example.com/blob": "x" * 300_000})
    proc = apply(cluster, too_big, check=False)
    assert proc.returncode != 0
    assert "262144 bytes" in proc.stderr, proc.stderr

    blob = "y" * 200_000
    apply(cluster, cr("big", namespace, annotations={"example.com/blob": blob}))
    wait_for(lambda: converged(cluster, namespace, "big"), timeout=90, what="convergence")
    added = [e for e in added_events(cluster, namespace) if e.name == "big"]
    assert len(added) == 1
    assert added[0].data["metadata"]["annotations"]["example.com/blob"] == blob


def test_names_at_the_length_limits_and_with_every_allowed_character(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    # A namespace is a DNS label: 63 characters of [a-z0-9-].
    long_ns = ("ns-0123456789-" + namespace)[:63].rstrip("-")
    long_ns = long_ns + "z" * (63 - len(long_ns))
    cluster.kubectl("create", "namespace", long_ns)
    try:
        pipeline(service_procs, f"{namespace},{long_ns}")
        # A CR name is a DNS subdomain: up to 253 characters of [a-z0-9.-], labels of <= 63.
        longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
        assert len(longest) == 253
        names = {
            (namespace, longest),
            (namespace, "a"),
            (namespace, "0.9-a.b-8.z"),
            (namespace, "x" + "-" * 20 + "y"),
            (long_ns, "m" * 253),
        }
        for ns, name in names:
            apply(cluster, cr(name, ns))
        for ns, name in names:
            wait_for(
                lambda ns=ns, name=name: converged(cluster, ns, name),
                timeout=120,
                what=f"{ns}/{name[:20]}... to converge",
            )
            dep = cluster.kubectl_json("get", "deployment", "-n", ns, name)
            assert dep["metadata"]["name"] == name
            assert all(len(v) <= 63 for v in dep["metadata"]["labels"].values())
            assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == (
                label_value(name)
            )
            mc = cluster.kubectl_json("get", "mc", "-n", ns, name)
            pods = mc["status"]["nodes"]
            assert len(pods) == 1 and len(pods[0]) <= 63, pods
        for ns in (namespace, long_ns):
            added = Counter(e.name for e in added_events(cluster, ns))
            expected = {name for n, name in names if n == ns}
            assert set(added) == expected
            assert all(c == 1 for c in added.values()), added
    finally:
        cluster.kubectl("delete", "namespace", long_ns, "--wait=false", check=False)


def test_unicode_in_labels_is_rejected_and_in_annotations_carried_intact(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    pipeline(service_procs, namespace)
    bad_value = apply(cluster, cr("u1", namespace, labels={"team": "ünïcødé"}), check=False)
    assert bad_value.returncode != 0 and "metadata.labels" in bad_value.stderr
    bad_key = apply(cluster, cr("u2", namespace, labels={"チーム": "x"}), check=False)
    assert bad_key.returncode != 0 and "metadata.labels" in bad_key.stderr
    bad_annotation_key = apply(cluster, cr("u3", namespace, annotations={"ключ": "x"}), check=False)
    assert (
        bad_annotation_key.returncode != 0 and "metadata.annotations" in bad_annotation_key.stderr
    )

    text = 'Grüße 🚀 日本語 עברית e\u0301 \u200b\U0001f9d1\u200d\U0001f4bb "quoted" \\ back'
    apply(cluster, cr("uni", namespace, annotations={"example.com/note": text}))
    wait_for(lambda: converged(cluster, namespace, "uni"), timeout=90, what="convergence")
    added = [e for e in added_events(cluster, namespace) if e.name == "uni"]
    assert len(added) == 1
    assert added[0].data["metadata"]["annotations"]["example.com/note"] == text
    for name in ("u1", "u2", "u3"):
        assert cluster.kubectl("get", "mc", "-n", namespace, name, check=False).returncode != 0


def test_a_nats_restart_while_the_watcher_publishes_loses_and_duplicates_nothing(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    pipeline(service_procs, namespace, only_watcher=True)
    names = [f"p-{i:02d}" for i in range(20)]
    for name in names:
        apply(cluster, cr(name, namespace))
    wait_for(
        lambda: len(added_events(cluster, namespace)) == len(names),
        timeout=60,
        what="the added events",
    )
    changes: list[tuple[str, str]] = []
    patched = threading.Event()

    async def patch_all() -> None:
        kube = await KubeClient.connect(cluster.kubeconfig)
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                obj = await kube.request(
                    "PATCH",
                    MEMCACHED.path(namespace, names[i % len(names)]),
                    body={"metadata": {"annotations": {"example.com/change": str(i)}}},
                    content_type="application/merge-patch+json",
                    resource="memcacheds",
                )
                changes.append((obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
                if len(changes) == 100:
                    patched.set()

        try:
            await asyncio.gather(*(one(i) for i in range(400)))
        finally:
            await kube.close()

    patcher = threading.Thread(target=lambda: asyncio.run(patch_all()))
    patcher.start()
    assert patched.wait(60), "the patches did not get going"
    cluster.restart_nats(kill=True)
    patcher.join(120)
    assert len(changes) == 400

    def stored() -> Counter[tuple[str, str]]:
        filter_ = subjects.wildcard(subjects.EVENTS, "memcached", namespace)
        msgs = asyncio.run(read_stream(cluster.nats_url, filter_))
        decoded = [events.decode(m.headers, m.data) for m in msgs]
        return Counter((e.name, e.resource_version) for e in decoded if e.change == "modified")

    want = set(changes)
    counts = wait_for(
        lambda: (c := stored()) and want <= set(c) and c,
        timeout=120,
        what="every change in the stream",
        every=1,
    )
    duplicated = {k: v for k, v in counts.items() if v > 1}
    assert not duplicated, f"changes stored more than once: {list(duplicated)[:5]}"
    assert service_procs.supervisor.running("watcher") is not None
