"""Issue 8, reduced chaos run: while 60 CRs are created, reconcilers are SIGKILLed every ~2 s, a
watcher is killed and restarted, and nats-server and kube-apiserver are restarted once each; all
CRs still converge with nothing lost, duplicated or stuck, and no process is left behind.

It runs on a control plane of its own (chaos.run brings one up), because restarting the API
server and NATS would disturb the session cluster the other tests share.
"""

from __future__ import annotations

import pytest

from chaos.run import run_chaos

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_chaos_loses_duplicates_and_strands_nothing() -> None:
    report = run_chaos(n=60, duration=25, kill_every=2, converge_timeout=180)
    print("\n".join(report.lines()))
    assert report.kills >= 5
    assert report.restarts.count("watcher-1") == 1
    assert {"nats-server", "kube-apiserver"} <= set(report.restarts)
    assert report.lost == 0, f"not converged: {report.wrong_deployments}"
    assert report.duplicated == 0, f"duplicate added events: {report.duplicate_added_events}"
    assert report.stuck == 0
    assert report.missing_added_events == []
    assert report.dead_letters == 0
    assert report.leaked_pids == []
