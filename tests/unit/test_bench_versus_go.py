"""Unit tests of bench/versus_go.py: the ratios issue 22's acceptance is stated in, ours ÷ the
controller-runtime peer within each repetition, CPU with nats-server on our side only."""

from __future__ import annotations

import pytest

from bench import figures, versus_go

pytestmark = pytest.mark.unit

PLANE = {"kube-apiserver": 50.0, "etcd": 10.0, "kwok": 5.0, "nats-server": 4.0}


def _rep(
    ours_available: float, go_available: float, traced_available: float | None = None
) -> dict[str, object]:
    traced = (
        {} if traced_available is None else {"pipeline-4-traced": {"t_available": traced_available}}
    )
    return {
        **traced,
        "pipeline-4": {
            "t_available": ours_available,
            "t_deployments": 8.0,
            "cpu_s": {**PLANE, "bench-pipeline-4-watcher": 6.0, "bench-pipeline-4-status": 10.0},
        },
        "go-32": {
            "t_available": go_available,
            "t_deployments": 10.0,
            "cpu_s": {**PLANE, "nats-server": 0.5, "bench-go-32-go-0": 10.0},
        },
    }


def test_cpu_counts_nats_only_for_the_pipeline() -> None:
    rep = _rep(50.0, 50.0)
    assert versus_go.operator_cpu(rep["pipeline-4"], with_nats=True) == 20.0  # type: ignore[arg-type]
    assert versus_go.operator_cpu(rep["go-32"], with_nats=False) == 10.0  # type: ignore[arg-type]
    assert versus_go.ratios(rep)["cpu"] == 2.0


def test_median_of_repetitions_and_limits() -> None:
    reps = [_rep(40.0, 50.0, 44.0), _rep(60.0, 50.0, 60.0), _rep(45.0, 50.0, 54.0)]
    out = versus_go.summary(reps)
    assert out is not None
    assert [r["available"] for r in out["runs"]] == [0.8, 1.2, 0.9]
    # Tracing: each traced run against the untraced run of its own repetition (1.1, 1.0, 1.2).
    assert [r["tracing"] for r in out["runs"]] == [1.1, 1.0, 1.2]
    assert out["median"] == {"available": 0.9, "deployments": 0.8, "cpu": 2.0, "tracing": 1.1}
    assert out["met"] == {"available": True, "deployments": True, "cpu": False, "tracing": True}


def test_no_peer_no_comparison() -> None:
    assert versus_go.summary([{"pipeline-4": {"t_available": 1.0}}]) is None
    assert versus_go.markdown({"versus_go": None}) == []


def test_the_report_shows_the_comparison() -> None:
    versus = versus_go.summary([_rep(40.0, 50.0, 48.0)])
    lines = "\n".join(versus_go.markdown({"versus_go": versus}))
    assert "| all Available | 0.80 | 0.80x | ≤ 1.00x | yes |" in lines
    assert "| operator CPU-s (ours incl. nats-server) | 2.00 | 2.00x | ≤ 1.50x | no |" in lines
    assert "| tracing on ÷ off (all Available) | 1.20 | 1.20x | ≤ 1.10x | no |" in lines


def test_the_go_peer_reconciles_are_counted_from_its_controller() -> None:
    text = (
        'controller_runtime_reconcile_total{controller="memcached",result="success"} 5\n'
        'controller_runtime_reconcile_total{controller="memcached",result="error"} 2\n'
    )
    metrics = {"go-0": text, "go-1": ""}
    assert figures.reconcile_runs("go-32x2", metrics, 1000) == 7.0


def test_tracing_is_measured_in_every_repetition_and_its_median_reported() -> None:
    before = {"total": 10, "spans": {"watcher": 10}, "by_name": {"watcher: send": 10}}
    after = {
        "total": 40,
        "spans": {"watcher": 30, "status": 10},
        "by_name": {"watcher: send": 30, "status: process": 10},
    }
    spans = figures.span_delta(before, after, 10)
    assert spans == {
        "total": 30,
        "by_service": {"watcher": 20, "status": 10},
        "per_cr_by_name": {"watcher: send": 2.0, "status: process": 1.0},
    }
    reps = [
        {"pipeline-4": {"t_available": 50.0}, "pipeline-4-traced": {"t_available": 60.0}},
        {
            "pipeline-4": {"t_available": 50.0},
            "pipeline-4-traced": {"t_available": 52.0, "spans": spans},
        },
    ]
    out = figures.tracing_summary(reps)
    assert out is not None
    assert out["runs_available"] == [1.2, 1.04]
    assert out["ratio_available"] == 1.12
    assert out["spans"] == 30  # the median traced run's (for two runs, the faster)
    assert figures.tracing_summary([{"pipeline-4": {"t_available": 1.0}}]) is None
