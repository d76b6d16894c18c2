"""Unit tests of bench/summary.py: what of a bench run is committed (figures and percentiles,
no per-CR samples), and that the report's plots and table read the summary as they read the
raw results."""

from __future__ import annotations

import json

import pytest

from bench import report, summary
from bench.harness import percentile

pytestmark = pytest.mark.unit


def _results() -> dict[str, object]:
    # 1,000 CRs whose latencies are 1 ms .. 1000 ms, and a floor twice as fast.
    samples = [round((i + 1) / 1000, 4) for i in range(1000)]
    return {
        "scenarios": {
            "floor": {"t_deployments": 5.0, "t_available": 10.0},
            "pipeline-4": {
                "t_deployments": 6.0,
                "t_available": 20.0,
                "latencies_deployment_s": samples,
                "latencies_available_s": list(reversed(samples)),
            },
        },
        "repetitions": [{"pipeline-4": {"latencies_deployment_s": samples}}],
    }


def test_summary_replaces_samples_by_their_percentiles() -> None:
    results = _results()
    got = summary.summarize(results)
    pipeline = got["scenarios"]["pipeline-4"]
    assert "latencies_deployment_s" not in pipeline
    assert "latencies_available_s" not in pipeline
    assert "latencies_deployment_s" not in got["repetitions"][0]["pipeline-4"]
    percentiles = pipeline["percentiles_deployment_s"]
    assert len(percentiles) == 101
    assert percentiles[0] == 0.001 and percentiles[100] == 1.0
    # The same nearest-rank percentiles as the run's p50/p99 figures.
    samples = results["scenarios"]["pipeline-4"]["latencies_deployment_s"]  # type: ignore[index]
    assert percentiles[50] == percentile(samples, 50) and percentiles[99] == percentile(samples, 99)
    assert pipeline["percentiles_available_s"] == percentiles
    # The raw results are left as they were (they go to raw/ as they are).
    assert len(results["scenarios"]["pipeline-4"]["latencies_deployment_s"]) == 1000  # type: ignore[index]


def test_summary_has_ratios_to_the_floor_and_kopf() -> None:
    ratios = summary.summarize(_results())["ratios_to_peers"]
    assert ratios["pipeline-4"]["floor_deployments"] == 1.2
    assert ratios["pipeline-4"]["floor_available"] == 2.0
    assert ratios["pipeline-4"]["kopf_available"] is None  # no kopf in this run


def test_cdf_from_the_summary_matches_the_samples() -> None:
    raw = _results()["scenarios"]["pipeline-4"]  # type: ignore[index]
    xs_raw, ys_raw = summary.cdf(raw, "latencies_deployment_s")
    s = summary.summarize(_results())["scenarios"]["pipeline-4"]
    xs, ys = summary.cdf(s, "latencies_deployment_s")
    assert len(xs) == 101 and ys[0] == 0.0 and ys[-1] == 1.0
    # Each percentile point lies on the raw CDF (within one sample's step).
    for x, y in zip(xs, ys, strict=True):
        at = xs_raw.index(x)
        assert abs(ys_raw[at] - y) <= 0.001 + 1e-9


def test_dumps_keeps_number_lists_on_one_line_and_round_trips() -> None:
    s = summary.summarize(_results())
    text = summary.dumps(s)
    assert json.loads(text) == s
    assert len(text.splitlines()) < 60


def test_markdown_reads_a_summary_as_it_reads_raw_results() -> None:
    results = _results()
    meta = {
        "n": 1000,
        "latency_ms": 0,
        "date": "2026-12-02",
        "machine": {"cpu": "x", "cores": 2, "memory_gb": 4, "load_avg_at_start": 0.1},
        "nodes": 4,
        "create_concurrency": 32,
        "status_concurrency": 8,
        "concurrency": 8,
        "floor_concurrency": 32,
    }
    results["meta"] = meta
    assert report.markdown(summary.summarize(results)) == report.markdown(results)
