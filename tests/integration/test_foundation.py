"""Issue 2 acceptance: the local control plane, the CRD and NATS behave like the real thing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from deploy.local import cluster as local_cluster
from deploy.local.layout import Layout, free_base_port
from deploy.local.processes import Supervisor
from tests.conftest import Cluster
from tests.support import wait_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_sample_applies_and_printer_columns_show(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "deploy/samples/memcached-sample.yaml"))
    out = cluster.kubectl("get", "mc", "memcached-sample").stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "SIZE", "READY", "AVAILABLE", "ENDPOINTS", "AGE"], out
    assert out.splitlines()[1].split()[:2] == ["memcached-sample", "3"]
    cluster.kubectl("delete", "-f", str(REPO / "deploy/samples/memcached-sample.yaml"))


def _mc(name: str, spec: dict) -> str:  # type: ignore[type-arg]
    return json.dumps(
        {
            "apiVersion": "cache.example.com/v1",
            "kind": "Memcached",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"size": -1}, "spec.size: Invalid value: -1"),
        ({"size": "three"}, 'spec.size: Invalid value: "string"'),
        (
            {
                "size": 1,
                "resources": {"requests": {"memory": "128Mi"}, "limits": {"memory": "64Mi"}},
            },
            "memory",
        ),
        ({"size": 1, "image": "   "}, "image"),
    ],
    ids=["negative-size", "string-size", "limit-below-request", "blank-image"],
)
def test_api_server_rejects_invalid_specs(cluster: Cluster, spec: dict, message: str) -> None:  # type: ignore[type-arg]
    proc = cluster.kubectl("apply", "-f", "-", input_=_mc("bad", spec), check=False)
    assert proc.returncode != 0, proc.stdout
    assert "is invalid" in proc.stderr and message in proc.stderr, proc.stderr
    assert cluster.kubectl("get", "mc", "bad", check=False).returncode != 0


def test_cel_rule_message_for_memory_limit_below_request(cluster: Cluster) -> None:
    spec = {"size": 1, "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1Mi"}}}
    proc = cluster.kubectl("apply", "-f", "-", input_=_mc("bad-mem", spec), check=False)
    assert proc.returncode != 0
    assert (
        "resources.limits.memory must not be less than resources.requests.memory" in proc.stderr
    ), proc.stderr


def test_plain_deployment_becomes_available(cluster: Cluster) -> None:
    cluster.kubectl("create", "deployment", "plain", "--image=nginx", "--replicas=3")
    try:

        def available() -> bool:
            d = cluster.kubectl_json("get", "deployment", "plain")
            return d.get("status", {}).get("availableReplicas") == 3

        wait_for(available, timeout=60, what="3 available replicas")
        pods = cluster.kubectl_json("get", "pods", "-l", "app=plain")["items"]
        assert len(pods) == 3
        assert all(p["spec"].get("nodeName", "").startswith("kwok-node-") for p in pods)
    finally:
        cluster.kubectl("delete", "deployment", "plain", "--wait=false")


def test_kubectl_scale_changes_spec_size(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", "-", input_=_mc("scaled", {"size": 2}))
    cluster.kubectl("scale", "mc/scaled", "--replicas=5")
    assert cluster.kubectl_json("get", "mc", "scaled")["spec"]["size"] == 5
    cluster.kubectl("delete", "mc", "scaled")


def test_rbac_refuses_a_user_without_rights(cluster: Cluster) -> None:
    proc = cluster.kubectl("get", "pods", "--as=nobody", check=False)
    assert proc.returncode != 0
    assert "Forbidden" in proc.stderr or "forbidden" in proc.stderr, proc.stderr
    assert (
        cluster.kubectl("auth", "can-i", "list", "pods", "--as=nobody", check=False).stdout.strip()
        == "no"
    )


async def _publish_and_read(url: str, *, publish: bool) -> list[bytes]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=5)
    try:
        js = nc.jetstream()
        if publish:
            await js.add_stream(
                StreamConfig(name="DURABILITY", subjects=["durability.>"], storage=StorageType.FILE)
            )
            for i in range(5):
                await js.publish("durability.x", f"m{i}".encode())
        info = await js.stream_info("DURABILITY")
        assert info.config.storage == StorageType.FILE
        return [
            (await js.get_msg("DURABILITY", seq)).data or b""
            for seq in range(1, info.state.messages + 1)
        ]
    finally:
        await nc.close()


async def test_jetstream_file_storage_survives_a_killed_server(cluster: Cluster) -> None:
    before = await _publish_and_read(cluster.nats_url, publish=True)
    assert before == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    await asyncio.to_thread(cluster.restart_nats, kill=True)
    after = await _publish_and_read(cluster.nats_url, publish=False)
    assert after == before


def test_cluster_up_twice_reuses_and_down_stops_everything(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "second", base_port=free_base_port(), nodes=1)
    sup = Supervisor(layout.state_dir)
    try:
        local_cluster.up(layout)
        first = {r.name: r.pid for r in sup.records()}
        assert set(first) == set(local_cluster.COMPONENTS)
        local_cluster.up(layout)
        second = {r.name: r.pid for r in sup.records()}
        assert second == first, "a second `up` must reuse the running processes"
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "deploy.local",
                "cluster",
                "status",
                "--state-dir",
                str(layout.state_dir),
            ],
            capture_output=True,
            text=True,
        )
        states = {
            fields[0]: fields[1]
            for fields in (line.split() for line in status.stdout.splitlines())
            if len(fields) > 1 and fields[0] in first
        }
        assert status.returncode == 0 and states == dict.fromkeys(first, "running")
        assert "nats node 0" in status.stdout  # and NATS as a cluster status shows it
    finally:
        local_cluster.down(layout)
    for pid in first.values():
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), f"pid {pid} still running after down"
