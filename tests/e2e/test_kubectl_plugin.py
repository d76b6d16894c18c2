"""Issue 20: `kubectl memcached` against the real cluster, after a scripted scenario.

The watcher, a reconciler and the status service run as processes; a Memcached is created,
scaled (``kubectl scale``), given a new image, then sent a poison request (one without the
header every request carries) that the reconciler dead-letters and ``dlq retry`` re-drives;
a second Memcached runs an image whose pods never become ready (kwok). Then the real
``kubectl`` runs the plugin from PATH (``kubectl memcached ...``) as the NATS ``audit`` user
for every read-only verb and asserts on ``-o json``; the write verbs refuse without the
``admin`` identity and work with it. One test runs the table in a pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import random
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from deploy.local import cluster as local_cluster
from memcached_operator.shared.bus import subjects
from tests.conftest import Cluster
from tests.support import Services, services, wait_for

pytestmark = pytest.mark.e2e

STUCK_IMAGE = "never-ready.invalid/memcached:1"
NEW_IMAGE = "memcached:1.6.39-alpine"


@dataclass
class Scenario:
    cluster: Cluster
    namespace: str
    poison_seq: int
    before_poison: str  # an RFC 3339 time between the image change and the poison request

    def env(self, user: str, **extra: str) -> dict[str, str]:
        """kubectl (and the plugin beside this interpreter) on PATH, connected as ``user``."""
        env = self.cluster.env(**self.cluster.layout.nats_credentials(user), **extra)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        env.pop("NO_COLOR", None)
        return env

    def plugin(
        self, *args: str, user: str = "audit", check: bool = True, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl memcached <args>``: kubectl finds the plugin on PATH."""
        proc = subprocess.run(
            [str(self.cluster.bin_dir / "kubectl"), "memcached", *args],
            env=self.env(user, **extra),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl memcached {' '.join(args)}: {proc.stderr}")
        return proc

    def json(self, *args: str, user: str = "audit") -> Any:
        return json.loads(self.plugin(*args, "-n", self.namespace, "-o", "json", user=user).stdout)


async def _publish_poison(url: str, namespace: str, name: str) -> None:
    key = subjects.ObjectKey(namespace, name)
    nc = await nats.connect(url, connect_timeout=5)
    try:
        # No Mcop-Origin: the reconciler's queue dead-letters it at once (MissingHeader).
        await nc.jetstream().publish(
            subjects.subject(subjects.REQUESTS, "reconcile", key), b"", headers={"X-Test": "poison"}
        )
    finally:
        await nc.close()


def _revisions(s: Scenario) -> list[dict[str, Any]]:
    return list(s.json("history", "cache")["revisions"])


@pytest.fixture(scope="module")
def scenario(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    namespace = f"kubectl-plugin-{random.randrange(16**5):05x}"
    cluster.kubectl("create", "namespace", namespace)
    with services(tmp_path_factory.mktemp("services"), cluster.env()) as svc:
        _pipeline(svc, namespace)
        s = Scenario(cluster, namespace, 0, "")
        cluster.apply_memcached(namespace, "cache", {"size": 1})
        cluster.wait_available(namespace, "cache")
        cluster.kubectl("scale", "-n", namespace, "mc/cache", "--replicas=3")
        wait_for(
            lambda: cluster.get_mc(namespace, "cache").get("status", {}).get("readyReplicas") == 3,
            timeout=90,
            what="3 ready replicas",
        )
        cluster.kubectl(
            "patch", "-n", namespace, "mc/cache", "--type=merge",
            "-p", json.dumps({"spec": {"image": NEW_IMAGE}}),
        )  # fmt: skip
        wait_for(
            lambda: any(r["generation"] == 3 and r["outcomes"] for r in _revisions(s)),
            timeout=90,
            what="the outcome of the image change",
        )
        cluster.wait_available(namespace, "cache")
        time.sleep(1.1)  # the poison request is stored strictly after this time
        s.before_poison = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 0.5))
        asyncio.run(_publish_poison(cluster.nats_url, namespace, "cache"))
        letters = wait_for(
            lambda: s.json("dlq", "list")["items"], timeout=60, what="the dead letter"
        )
        s.poison_seq = letters[0]["sequence"]
        cluster.apply_memcached(namespace, "stuck", {"size": 2, "image": STUCK_IMAGE})
        wait_for(
            lambda: len(s.json("explain", "stuck")["unreadyPods"]) == 2,
            timeout=90,
            what="two unready pods of the stalled rollout",
        )
        yield s
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _pipeline(svc: Services, namespace: str) -> None:
    svc.start("watcher", "--namespaces", namespace, name="watcher")
    svc.start("reconciler", name="reconciler-0")
    svc.start("status", name="status-0")


def test_history_lists_each_revision_with_its_change_author_outcome_and_status(
    scenario: Scenario,
) -> None:
    revisions = _revisions(scenario)
    assert [r["generation"] for r in revisions] == [1, 2, 3]
    created, scaled, image = revisions
    assert created["change"].startswith("created") and "size=1" in created["change"]
    assert scaled["changes"] == [{"path": "size", "from": 1, "to": 3}]
    assert image["changes"][0]["path"] == "image" and image["changes"][0]["to"] == NEW_IMAGE
    assert created["fieldManager"].startswith("kubectl")
    for r in revisions:
        assert r["outcomes"] and r["outcomes"][0]["result"] == "success", r
        assert len(r["outcomes"][0]["traceId"]) == 32
        assert r["traceId"]
    assert any(
        t["type"] == "Available" and t["status"] == "True" for t in created["transitions"]
    ), created["transitions"]
    # --revision prints the whole spec as it was.
    spec = scenario.json("history", "cache", "--revision", "2")["spec"]
    assert spec["size"] == 3 and spec.get("image") != NEW_IMAGE
    missing = scenario.plugin(
        "history", "cache", "-n", scenario.namespace, "--revision", "9", check=False
    )
    assert missing.returncode == 1 and "no revision 9" in missing.stderr


def test_history_reads_the_nats_url_from_the_operators_configmap(scenario: Scenario) -> None:
    cluster, ns = scenario.cluster, scenario.namespace
    # The local cluster publishes it where deploy/base does (again here: another test may have
    # deleted the operator's namespace since).
    local_cluster.publish_nats_configmap(cluster.layout)
    env = scenario.env("audit")
    env.pop("NATS_URL")
    proc = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "memcached", "history", "cache", "-n", ns, "-o", "json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["revisions"]) == 3
    # ... or from another namespace's.
    url = cluster.layout.nats_credentials("audit")["NATS_URL"]
    cluster.kubectl(
        "create", "configmap", "-n", ns, "memcached-operator-nats", f"--from-literal=url={url}"
    )
    env = scenario.env("audit")
    env.pop("NATS_URL")
    proc = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "memcached", "history", "cache", "-n", ns,
         "-o", "json", "--operator-namespace", ns],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["revisions"]) == 3
    env["MCOP_OPERATOR_NAMESPACE"] = "no-such-namespace"
    proc = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "memcached", "history", "cache", "-n", ns],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "memcached-operator-nats" in proc.stderr


def test_explain_says_why_a_rollout_is_stalled(scenario: Scenario) -> None:
    doc = scenario.json("explain", "stuck")
    assert doc["exists"] and doc["size"] == 2
    assert doc["rollout"]["state"] in ("Progressing", "Stalled")
    assert doc["rollout"]["ready"] == 0 and doc["rollout"]["replicas"] == 2
    assert {p["reason"] for p in doc["unreadyPods"]} == {"ContainersNotReady"}
    available = {c["type"]: c for c in doc["conditions"]}["Available"]
    assert available["status"] == "False"
    assert doc["outcome"]["result"] == "success" and len(doc["traceId"]) == 32
    assert doc["requests"]["reconcile"] == {"pending": False}
    assert doc["leases"]["reconcile"] == {"held": False}
    assert doc["deadLetters"] == []
    assert any(line.startswith("Not ready: pod stuck-") for line in doc["summary"])
    # A trace link when the template is set.
    proc = scenario.plugin(
        "explain", "stuck", "-n", scenario.namespace, "-o", "json",
        OTEL_TRACE_URL_TEMPLATE="https://traces.example/trace/{trace_id}",
    )  # fmt: skip
    assert json.loads(proc.stdout)["traceUrl"] == f"https://traces.example/trace/{doc['traceId']}"


def test_the_human_forms_say_it_in_a_few_lines(scenario: Scenario) -> None:
    ns = scenario.namespace
    explained = scenario.plugin("explain", "stuck", "-n", ns).stdout
    labels = [line.split()[0] for line in explained.splitlines()]
    for label in ("Memcached", "Available", "Last", "Queue", "Dead", "Rollout", "Not", "Trace"):
        assert label in labels, explained
    assert "ContainersNotReady" in explained and "0/2 ready" in explained
    letters = scenario.plugin("dlq", "list", "-n", ns).stdout
    assert letters.split()[:6] == [
        "SEQ",
        "TIME",
        "CONTROLLER",
        "NAMESPACE/NAME",
        "REASON",
        "DELIVERIES",
    ]
    assert "MissingHeader" in letters
    wide = scenario.plugin("history", "cache", "-n", ns, "-o", "wide").stdout
    assert "GENERATION" in wide.splitlines()[0] and "UID" in wide.splitlines()[0]
    # Printed for the README (run with -s to see them).
    for text in (scenario.plugin("history", "cache", "-n", ns).stdout, explained, letters):
        print(text)


def test_dead_letters_are_listed_shown_and_redriven_by_the_admin_only(scenario: Scenario) -> None:
    ns, seq = scenario.namespace, scenario.poison_seq
    (letter,) = scenario.json("dlq", "list", "cache")["items"]
    assert letter["sequence"] == seq and letter["reason"] == "MissingHeader"
    assert letter["controller"] == "reconcile" and letter["key"] == f"{ns}/cache"
    assert "Mcop-Origin" in letter["error"]
    everywhere = scenario.json("dlq", "list", "-A")["items"]
    assert seq in [d["sequence"] for d in everywhere]
    assert scenario.json("dlq", "list", "--until", scenario.before_poison)["items"] == []
    shown = scenario.json("dlq", "show", str(seq))
    assert shown["headers"]["X-Test"] == "poison" and shown["bodyBytes"] == 0
    explained = scenario.json("explain", "cache")["deadLetters"]
    assert [d["sequence"] for d in explained] == [seq]

    # The audit user may read but not re-drive or purge: refused, with the reason.
    for verb in (("retry", str(seq)), ("purge", "cache", "--yes")):
        refused = scenario.plugin("dlq", *verb, "-n", ns, check=False)
        assert refused.returncode == 1
        assert "needs the NATS 'admin' identity" in refused.stderr, refused.stderr

    outcomes_before = len(_revisions(scenario)[-1]["outcomes"])
    done = scenario.json("dlq", "retry", str(seq), user="admin")
    assert done["deadLetter"]["sequence"] == seq
    assert done["request"]["origin"] == "kubectl-memcached:dlq-retry"
    assert done["event"]["type"] == "io.memcached-operator.deadletter.retried"
    # The re-driven request runs: one more outcome for the CR, a success.
    newest = wait_for(
        lambda: (o := _revisions(scenario)[-1]["outcomes"])[outcomes_before:] and o[-1],
        timeout=60,
        what="the outcome of the re-driven request",
    )
    assert newest["result"] == "success"
    # ... and the re-drive is on the audit trail, with who did it.
    audited = scenario.plugin("audit", "-n", ns, "--kind", "deadletter", "-o", "json").stdout
    (event,) = [json.loads(line) for line in audited.splitlines()]
    assert event["type"] == "io.memcached-operator.deadletter.retried"
    assert event["name"] == "cache" and event["fieldManager"] == "kubectl-memcached"

    # purge needs a confirmation: without a terminal, --yes.
    unconfirmed = scenario.plugin("dlq", "purge", "cache", "-n", ns, user="admin", check=False)
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    assert scenario.json("dlq", "list", "cache")["items"]
    purged = scenario.json("dlq", "purge", "cache", "--yes", user="admin")
    assert purged["purged"] == 1 and purged["sequences"] == [seq]
    assert scenario.json("dlq", "list", "cache")["items"] == []


def test_audit_tails_the_stream_with_follow(scenario: Scenario) -> None:
    ns = scenario.namespace
    listed = scenario.plugin(
        "audit", "-n", ns, "--kind", "memcached", "--name", "cache", "-o", "json"
    )
    types = [json.loads(line)["type"] for line in listed.stdout.splitlines()]
    assert types[0] == "io.memcached-operator.memcached.added" and len(types) >= 3
    follow = subprocess.Popen(
        [str(scenario.cluster.bin_dir / "kubectl"), "memcached", "audit", "-n", ns,
         "--kind", "memcached", "--name", "followed", "--follow", "-o", "json"],
        env=scenario.env("audit"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Changes until one is printed: the follower prints only what is newer than its start,
        # and its start-up takes seconds on a loaded machine.
        assert follow.stdout is not None
        ready: list[Any] = []
        for size in range(1, 30):
            scenario.cluster.apply_memcached(ns, "followed", {"size": size})
            ready, _, _ = select.select([follow.stdout], [], [], 2)
            if ready:
                break
        assert ready, "nothing printed while the CR kept changing"
        event = json.loads(follow.stdout.readline())
        assert event["name"] == "followed" and event["namespace"] == ns
        assert event["type"].startswith("io.memcached-operator.memcached.")
        assert follow.poll() is None  # still following
    finally:
        follow.terminate()
        follow.wait(timeout=10)


def _read_pty(fd: int, proc: subprocess.Popen[bytes]) -> str:
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode(errors="replace")


def test_history_table_in_a_terminal_has_the_columns_a_person_reads(scenario: Scenario) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [str(scenario.cluster.bin_dir / "kubectl"), "memcached", "history", "cache", "-n",
         scenario.namespace],
        env={**scenario.env("audit"), "TERM": "xterm", "COLUMNS": "250"},
        stdin=secondary, stdout=secondary, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    try:
        text = _read_pty(primary, proc)
    finally:
        os.close(primary)
        proc.wait(timeout=30)
    assert proc.returncode == 0, text
    assert "\x1b[1m" in text  # a terminal gets colour
    plain = text.replace("\x1b[1m", "").replace("\x1b[0m", "").replace("\x1b[32m", "")
    lines = [line for line in plain.replace("\r", "").splitlines() if line.strip()]
    header = lines[0].split()
    for column in ("REVISION", "TIME", "CHANGE", "BY", "OUTCOME", "STATUS", "TRACE"):
        assert column in header, lines[0]
    rows = lines[1:]
    assert [row.split()[0] for row in rows] == ["1", "2", "3"], rows
    assert "size: 1 -> 3" in rows[1] and "image: " in rows[2]
    assert all("success" in row for row in rows)
