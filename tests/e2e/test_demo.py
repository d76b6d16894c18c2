"""Issue 7 acceptance: the README's main command runs end to end and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local.layout import free_base_port
from deploy.local.processes import Supervisor

pytestmark = pytest.mark.e2e


def test_demo_with_teardown_reports_every_sample_available(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.local",
            "demo",
            "--teardown",
            "--state-dir",
            str(state),
            "--base-port",
            str(free_base_port()),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "[demo] all samples Available" in out
    table = out.split("$ kubectl get mc", 1)[1].strip().splitlines()
    assert table[0].split()[:4] == ["NAME", "SIZE", "READY", "AVAILABLE"]
    rows = {line.split()[0]: line.split() for line in table[1:3]}
    assert set(rows) == {"memcached-sample", "memcached-with-resources"}
    assert all(row[3] == "True" for row in rows.values())
    # How an application connects: one endpoint per ready pod, and the Service's DNS name.
    servers = {
        line.split(":", 1)[0].strip(): line.split("servers ", 1)[1].split(" |", 1)[0]
        for line in out.split("how an application connects", 1)[1].splitlines()[1:3]
    }
    assert set(servers) == {"memcached-sample", "memcached-with-resources"}
    for name, listed in servers.items():
        assert len(listed.split(",")) == int(rows[name][2]), out
        assert all(s.endswith(":11211") for s in listed.split(",")), out
    assert "| dns memcached-sample.default.svc port 11211" in out
    trace_line = next(line for line in out.splitlines() if line.startswith("trace id"))
    trace_id = trace_line.rsplit(" ", 1)[1]
    assert len(trace_id) == 32 and int(trace_id, 16) != 0
    audit = out.split("$ memcached-operator audit", 1)[1].splitlines()
    assert audit[1].split()[:2] == ["TIME", "TYPE"]
    assert any("io.memcached-operator." in line and "default/memcached-" in line for line in audit)
    # Everything it started is gone: the services and the control plane.
    for sup in (Supervisor(state), Supervisor(state / "demo")):
        assert [r.name for r in sup.records() if r.alive()] == []
