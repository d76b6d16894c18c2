"""Issue 8, bad input: everything a user or a broken client can throw at the pipeline ends as a
clear error, a condition or a dead-lettered message, with no lost and no duplicated work.

The corpus runs against the real services (watcher, reconciler, status as processes), the real
API server and the real nats-server: malformed requests and CloudEvents, oversized payloads,
CR fields of the wrong type, huge annotations, names at the length limits and with every
character Kubernetes allows, unicode in labels and annotations, and a NATS restart while the
watcher publishes.

Issue 15 adds admission: every CRD field at and past its bound, rejected by the API server with
the exact error naming the field, the "1e999999999" quantity that pinned kube-apiserver, and the
API server's own estimate of each CEL rule's cost.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest

from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api import crd
from memcached_operator.shared.api.contract import label_value
from memcached_operator.shared.api.models import IMAGE_PATTERN, Memcached
from memcached_operator.shared.api.quantity import QUANTITY_PATTERN
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import DEADLETTER_STREAM
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.kube.client import MEMCACHED, KubeClient
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
    cluster: Cluster, obj: dict[str, Any], *, check: bool = True, request_timeout: int = 0
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --server-side` of ``obj``; with ``request_timeout`` (seconds), a request
    the API server spends longer on fails instead of hanging the test."""
    flags = [f"--request-timeout={request_timeout}s"] if request_timeout else []
    return cluster.kubectl(
        "apply",
        "--server-side",
        *flags,
        "-f",
        "-",
        input_=json.dumps(obj),
        check=check,
        timeout=2 * request_timeout or 120,
    )


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


# Issue 15: bounded input at admission. Every spec here is one the API server must reject with
# exactly the error given (it names the field); tests/unit/test_models.py shows the models
# refusing the same specs and accepting the ones at the bounds.
NOT_CHECKED = "some validation rules were not checked because the object was invalid"
TOO_LARGE = "must be less than 9223372036854775807 (2^63-1), where Kubernetes caps quantities"
RESOURCE_NAMES = (
    "keys must be resource names (cpu, memory, ephemeral-storage, hugepages-<size> or"
    " <domain>/<name>) of at most 317 characters"
)
MEMORY = "spec.resources.limits.memory"
MEMORY_MB = "spec.memoryMB"
CONNECTIONS = "spec.maxConnections"
ITEM = "spec.maxItemSize"
ITEM_ABOVE_HALF = (
    "maxItemSize must be at most half of memoryMB (memcached refuses to start otherwise)"
)


def errors(stderr: str) -> list[str]:
    """The API server's field errors in a kubectl rejection, without its note that CEL rules
    were skipped (it follows every maxLength/maxItems/maxProperties error)."""
    _, _, body = stderr.partition(" is invalid: ")
    lines = [line.removeprefix("* ") for line in body.strip().splitlines()]
    return [line for line in lines if line and NOT_CHECKED not in line]


def limits(**values: Any) -> dict[str, Any]:
    return {"resources": {"limits": values}}


def pattern_error(path: str, value: str, pattern: str) -> str:
    return f"{path}: Invalid value: {json.dumps(value, ensure_ascii=False)}: {path} in body should match '{pattern}'"


def quantity_error(value: str) -> str:
    return pattern_error(MEMORY, value, QUANTITY_PATTERN)


def image_error(value: str) -> str:
    return pattern_error("spec.image", value, IMAGE_PATTERN)


REJECTED_AT_ADMISSION: list[tuple[str, dict[str, Any], str | list[str]]] = [
    ("image-513", {"image": "i" * 513}, "spec.image: Too long: may not be more than 512 bytes"),
    ("image-upper", {"image": "Memcached"}, image_error("Memcached")),
    ("image-colon", {"image": "memcached:"}, image_error("memcached:")),
    ("image-space", {"image": "mem cached"}, image_error("mem cached")),
    ("image-unicode", {"image": "mémcached:1.6"}, image_error("mémcached:1.6")),
    ("image-newline", {"image": "memcached:1.6\n"}, image_error("memcached:1.6\n")),
    # The attacks: each exponent computed 10^exponent inside kube-apiserver.
    (
        "exponent-9-digits",
        {"resources": {"limits": {"memory": "1e999999999"}, "requests": {"memory": "1"}}},
        quantity_error("1e999999999"),
    ),
    ("exponent-7-digits", limits(memory="1e9999999"), quantity_error("1e9999999")),
    ("exponent-3-digits", limits(memory="1e100"), quantity_error("1e100")),
    ("digits-20", limits(memory="1" * 20), quantity_error("1" * 20)),
    ("decimals-10", limits(memory="0.0000000001"), quantity_error("0.0000000001")),
    ("fractional-exponent", limits(memory="1e1.5"), quantity_error("1e1.5")),
    ("fullwidth-digit", limits(memory="\uff11Gi"), quantity_error("\uff11Gi")),
    ("spaces", limits(memory=" 12 "), quantity_error(" 12 ")),
    ("quantity-35", limits(memory="1" * 35), f"{MEMORY}: Too long: may not be more than 34 bytes"),
    (
        "int-max-plus-1",
        limits(memory=2**63 - 1024 + 1),
        f"{MEMORY}: Invalid value: 9223372036854774785: {MEMORY} in body should be less than"
        " or equal to 9223372036854774784",
    ),
    (
        "int-2-63",
        limits(memory=2**63),
        [
            f'{MEMORY}: Invalid value: "number": {MEMORY} in body must be of type'
            ' integer,string: "number"',
            f"{MEMORY}: Invalid value: 9.223372036854776e+18: {MEMORY} in body should be less"
            " than or equal to 9.223372036854775e+18",
        ],
    ),
    (
        "string-2-63-minus-1",
        limits(memory="9223372036854775807"),
        f'spec.resources.limits[memory]: Invalid value: "9223372036854775807": {TOO_LARGE}',
    ),
    (
        "1e99",
        limits(memory="1e99"),
        f'spec.resources.limits[memory]: Invalid value: "1e99": {TOO_LARGE}',
    ),
    (
        "8ei",
        limits(memory="8Ei"),
        f'spec.resources.limits[memory]: Invalid value: "8Ei": {TOO_LARGE}',
    ),
    ("key-typo", limits(memroy="1Gi"), f"spec.resources.limits: Invalid value: {RESOURCE_NAMES}"),
    (
        "key-unicode",
        limits(mémoire="1Gi"),
        f"spec.resources.limits: Invalid value: {RESOURCE_NAMES}",
    ),
    (
        "key-318",
        limits(**{"e" * 254 + "/" + "n" * 63: "1"}),
        f"spec.resources.limits: Invalid value: {RESOURCE_NAMES}",
    ),
    (
        "keys-17",
        {"resources": {"requests": {f"example.com/r{i}": "1" for i in range(17)}}},
        "spec.resources.requests: Too many: 17: must have at most 16 items",
    ),
    (
        "memory-mb-0",
        {"memoryMB": 0},
        [
            f"{MEMORY_MB}: Invalid value: 0: {MEMORY_MB} in body should be greater than or equal"
            " to 1",
            # The schema error does not stop the rule; the item size is defaulted to 1 MiB.
            f"spec: Invalid value: {ITEM_ABOVE_HALF}",
        ],
    ),
    (
        "memory-mb-max-plus-1",
        {"memoryMB": 1048577},
        f"{MEMORY_MB}: Invalid value: 1048577: {MEMORY_MB} in body should be less than or equal"
        " to 1048576",
    ),
    (
        "connections-15",
        {"maxConnections": 15},
        f"{CONNECTIONS}: Invalid value: 15: {CONNECTIONS} in body should be greater than or"
        " equal to 16",
    ),
    (
        "connections-65537",
        {"maxConnections": 65537},
        f"{CONNECTIONS}: Invalid value: 65537: {CONNECTIONS} in body should be less than or"
        " equal to 65536",
    ),
    (
        "item-0",
        {"maxItemSize": 0},
        f"{ITEM}: Invalid value: 0: {ITEM} in body should be greater than or equal to 524288",
    ),
    (
        "item-not-multiple",
        {"maxItemSize": 1049600},
        f"{ITEM}: Invalid value: 1049600: {ITEM} in body should be a multiple of 524288",
    ),
    (
        "item-past-1gi",
        {"maxItemSize": 1073741824 + 524288, "memoryMB": 1048576},
        f"{ITEM}: Invalid value: 1074266112: {ITEM} in body should be less than or equal to"
        " 1073741824",
    ),
    (
        "item-above-half-memory",
        {"maxItemSize": 1048576, "memoryMB": 1},
        f"spec: Invalid value: {ITEM_ABOVE_HALF}",
    ),
    (
        "exporter-image-513",
        {"monitoring": {"enabled": True, "image": "i" * 513}},
        "spec.monitoring.image: Too long: may not be more than 512 bytes",
    ),
    (
        "exporter-image-upper",
        {"monitoring": {"image": "Exporter"}},
        pattern_error("spec.monitoring.image", "Exporter", IMAGE_PATTERN),
    ),
    (
        "memory-mb-above-limit",
        {"memoryMB": 129, **limits(memory="128Mi")},
        "spec: Invalid value: memoryMB must not exceed resources.limits.memory",
    ),
]


@pytest.mark.parametrize(
    ("name", "spec", "error"), REJECTED_AT_ADMISSION, ids=[c[0] for c in REJECTED_AT_ADMISSION]
)
def test_every_spec_field_past_its_bound_is_rejected_naming_it(
    cluster: Cluster, namespace: str, name: str, spec: dict[str, Any], error: str | list[str]
) -> None:
    obj = cr(name, namespace)
    obj["spec"] = spec
    proc = apply(cluster, obj, check=False, request_timeout=30)
    assert proc.returncode != 0, f"the API server accepted {name}"
    assert errors(proc.stderr) == ([error] if isinstance(error, str) else error), proc.stderr
    assert cluster.kubectl("get", "mc", "-n", namespace, name, check=False).returncode != 0


ACCEPTED_AT_THE_BOUNDS: list[tuple[str, dict[str, Any]]] = [
    ("image-512", {"image": "i" * 512}),
    (
        "image-registry-tag-digest",
        {"image": "registry.example.com:5000/team/memcached:1.6.38-alpine@sha256:" + "a" * 64},
    ),
    ("image-separators", {"image": "localhost/mem_cached__x.y-z/memcached"}),
    ("string-max", limits(memory="9223372036854775806")),
    ("int-max", limits(memory=2**63 - 1024)),
    ("quantity-34", limits(memory="+1234567890123456789.123456789e-99")),
    ("suffixes", limits(memory="7Ei", cpu="9E", **{"hugepages-2Mi": "1Gi"})),
    ("extended", {"resources": {"requests": {"example.com/gpu": 1, "ephemeral-storage": "1e9"}}}),
    ("keys-16", {"resources": {"requests": {f"example.com/r{i}": "1" for i in range(16)}}}),
    ("key-317", limits(**{"e" * 253 + "/" + "n" * 63: "1"})),
    ("memory-mb-1", {"memoryMB": 1, "maxItemSize": 524288}),
    ("exporter-image-512", {"monitoring": {"enabled": True, "image": "i" * 512}}),
    ("memory-mb-max-item-max", {"memoryMB": 1048576, "maxItemSize": 1073741824}),
    ("connections-16", {"maxConnections": 16}),
    ("connections-65536", {"maxConnections": 65536}),
    ("memory-mb-at-limit", {"memoryMB": 128, **limits(memory="128Mi")}),
    ("memory-mb-at-exact-limit", {"memoryMB": 2, **limits(memory=2097152)}),
]


@pytest.mark.parametrize(
    ("name", "spec"), ACCEPTED_AT_THE_BOUNDS, ids=[c[0] for c in ACCEPTED_AT_THE_BOUNDS]
)
def test_every_spec_field_at_its_bound_is_accepted(
    cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]
) -> None:
    obj = cr(name, namespace)
    obj["spec"] = spec
    # A server-side dry run: every check of a real create, CEL included, and nothing stored.
    cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input_=json.dumps(obj))
    Memcached.from_api(obj)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_unbounded_exponent_is_refused_by_the_schema_and_costs_the_api_server_nothing(
    cluster: Cluster, namespace: str
) -> None:
    # Issue 15's first attack: with the exponent unbounded, the CEL rule's quantity() ran
    # for minutes inside kube-apiserver (the apply timed out, a core stayed at 100 %). A
    # pattern error alone does not stop the API server from running CEL rules, so this also
    # proves the rules' own pattern guard.
    apiserver = cluster.supervisor.get("kube-apiserver")
    assert apiserver is not None and apiserver.alive()
    obj = cr("hostile", namespace)
    obj["spec"] = {"resources": {"limits": {"memory": "1e999999999"}, "requests": {"memory": "1"}}}
    before = cpu_seconds(apiserver.pid)
    proc = apply(cluster, obj, check=False, request_timeout=30)
    spent = cpu_seconds(apiserver.pid) - before
    assert "request did not complete" not in proc.stderr, proc.stderr
    assert errors(proc.stderr) == [quantity_error("1e999999999")], proc.stderr
    # Generous, and no ratio: the attack cost minutes of CPU, a rejection costs milliseconds
    # (background work of the control plane included).
    assert spent < 2.0, f"kube-apiserver used {spent:.2f} s of CPU for one rejected apply"


def test_names_past_their_limits_are_rejected(cluster: Cluster, namespace: str) -> None:
    # 253 characters is accepted and converges (test_names_at_the_length_limits_...): the
    # Deployment keeps the name, the ReplicaSet and pod names are shortened by Kubernetes and
    # the selector label is a hashed stand-in, so no CR name the API server accepts gets stuck.
    for name, error in [
        ("m" * 254, "must be no more than 253 characters"),
        ("mémo", "a lowercase RFC 1123 subdomain must consist of"),
        ("Cache", "a lowercase RFC 1123 subdomain must consist of"),
    ]:
        proc = apply(cluster, cr(name, namespace), check=False)
        assert proc.returncode != 0, name
        found = errors(proc.stderr)
        assert len(found) == 1 and found[0].startswith("metadata.name: Invalid value: "), found
        assert error in found[0], found
    proc = cluster.kubectl("create", "namespace", "n" * 64, "--dry-run=server", check=False)
    assert "metadata.name: Invalid value: " in proc.stderr
    assert "must be no more than 63 characters" in proc.stderr


CONDITION = {
    "type": "Available",
    "status": "True",
    "lastTransitionTime": "2025-01-01T00:00:00Z",
    "reason": "Ready",
    "message": "",
}


def conditions(count: int, **overrides: str) -> list[dict[str, str]]:
    return [{**CONDITION, "type": f"T{i}", **overrides} for i in range(count)]


STATUS_BOUNDS: list[tuple[str, dict[str, Any], str | None]] = [
    ("nodes-2000", {"nodes": [f"p-{i}" for i in range(2000)]}, None),
    (
        "nodes-2001",
        {"nodes": [f"p-{i}" for i in range(2001)]},
        "status.nodes: Too many: 2001: must have at most 2000 items",
    ),
    ("node-253", {"nodes": ["p" * 253]}, None),
    (
        "node-254",
        {"nodes": ["p" * 254]},
        "status.nodes[0]: Too long: may not be more than 253 bytes",
    ),
    ("conditions-32", {"conditions": conditions(32)}, None),
    (
        "conditions-33",
        {"conditions": conditions(33)},
        "status.conditions: Too many: 33: must have at most 32 items",
    ),
    ("message-32768", {"conditions": conditions(1, message="m" * 32768)}, None),
    (
        "message-32769",
        {"conditions": conditions(1, message="m" * 32769)},
        "status.conditions[0].message: Too long: may not be more than 32768 bytes",
    ),
    (
        "time-65",
        {"conditions": conditions(1, lastTransitionTime="2025-01-01T00:00:00." + "0" * 44 + "Z")},
        "status.conditions[0].lastTransitionTime: Too long: may not be more than 64 bytes",
    ),
    ("trace-id", {"lastTraceId": "4bf92f3577b34da6a3ce929d0e0e4736"}, None),
    (
        "trace-id-upper",
        {"lastTraceId": "4BF92F3577B34DA6A3CE929D0E0E4736"},
        'status.lastTraceId: Invalid value: "4BF92F3577B34DA6A3CE929D0E0E4736": lastTraceId in'
        " body should match '^[0-9a-f]{32}$'",
    ),
]


def test_status_fields_are_bounded_for_every_writer(cluster: Cluster, namespace: str) -> None:
    # Status is written by the status service, but anyone granted memcacheds/status can write
    # it too; each bound is checked at and past its limit through the status subresource.
    apply(cluster, cr("status-bounds", namespace))
    for case, status, error in STATUS_BOUNDS:
        proc = cluster.kubectl(
            "patch",
            "mc",
            "status-bounds",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
            check=False,
        )
        if error is None:
            assert proc.returncode == 0, (case, proc.stderr)
        else:
            assert proc.returncode != 0, case
            assert errors(proc.stderr) == [error], (case, proc.stderr)


# The API server's limits on CEL cost (k8s.io/apiextensions-apiserver validation.go and
# k8s.io/apiserver/pkg/apis/cel/config.go): a CRD is refused when one rule's estimated cost,
# multiplied by how often it can run per object, exceeds 10^7; at run time one evaluation
# may cost 10^6 (the per-call limit) and all rules of one object 10^7.
STATIC_RULE_LIMIT = 10**7
PER_CALL_LIMIT = 10**6
OBJECT_BUDGET = 10**7
COST_FACTOR = re.compile(
    r"\* (\S+)\.rule: Forbidden: estimated rule cost exceeds budget by factor of"
    r" (more than 100|[0-9.]+)x"
)


def cost_probe(spec: dict[str, Any], *, copies: int) -> dict[str, Any]:
    """A CRD whose objects hold a list of up to ``copies`` Memcached specs.

    The API server multiplies each rule's estimated cost by ``copies``, so the rules of a
    spec that the API server reports as over budget by a factor f cost f * 10^7 / copies
    per Memcached; the rules it does not report cost at most 10^7 / copies.
    """
    group = "costprobe.example.com"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"costprobes.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": "CostProbe",
                "listKind": "CostProbeList",
                "plural": "costprobes",
                "singular": "costprobe",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "copies": {
                                            "type": "array",
                                            "maxItems": copies,
                                            "items": spec,
                                        }
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def cel_rules(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]
        return own + [r for key, value in node.items() for r in cel_rules(value)]
    if isinstance(node, list):
        return [r for item in node for r in cel_rules(item)]
    return []


def without_bounds(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: without_bounds(value)
            for key, value in node.items()
            if key not in ("maxLength", "maxItems", "maxProperties")
        }
    if isinstance(node, list):
        return [without_bounds(item) for item in node]
    return node


def test_the_api_server_estimates_every_cel_rule_far_below_the_per_call_limit(
    cluster: Cluster,
) -> None:
    spec = crd.openapi_schema()["properties"]["spec"]
    rules = len(cel_rules(spec))
    copies = 100_000
    proc = cluster.kubectl(
        "create",
        "--dry-run=server",
        "-f",
        "-",
        input_=json.dumps(cost_probe(spec, copies=copies)),
        check=False,
    )
    reported = COST_FACTOR.findall(proc.stderr)
    assert reported, proc.stderr
    costs = {}
    for path, factor in reported:
        assert factor != "more than 100", f"{path} costs more than 10^4 per Memcached"
        costs[path.split(".items.", 1)[1]] = float(factor) * STATIC_RULE_LIMIT / copies
    print("estimated cost per Memcached, by rule:", json.dumps(costs, indent=1))
    assert len(costs) <= rules
    # Every rule, even run for each of up to 16 resources of a map, stays under 1 % of what
    # one evaluation may cost, and all of them together under 1 % of an object's budget.
    assert max(costs.values()) <= PER_CALL_LIMIT / 100, costs
    unreported = rules - len(costs)
    total = sum(costs.values()) + unreported * STATIC_RULE_LIMIT / copies
    assert total <= OBJECT_BUDGET / 100, total

    # The same rules without the schema's length bounds are refused outright, at one copy:
    # the estimate is what the bounds bring down.
    proc = cluster.kubectl(
        "create",
        "--dry-run=server",
        "-f",
        "-",
        input_=json.dumps(cost_probe(without_bounds(spec), copies=1)),
        check=False,
    )
    assert proc.returncode != 0
    unbounded = dict(COST_FACTOR.findall(proc.stderr))
    value_rule = "properties[limits].additionalProperties.x-kubernetes-validations[0]"
    assert [f for p, f in unbounded.items() if p.endswith(value_rule)] == ["more than 100"], (
        proc.stderr
    )
