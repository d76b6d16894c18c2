"""What of a bench run is committed: a summary, not the per-CR samples.

A run records every CR's latency (two floats per CR per scenario, ~30,000 lines of JSON for
N = 1,000), which made each re-run of the bench rewrite most of the repository's lines. The
committed ``<stem>.json`` keeps every figure of the run (times, ratios, medians, p50/p99, CPU,
metrics breakdowns) and, in place of each sample list, its value at every whole percentile
(0..100): enough to draw the latency CDFs and to read any percentile, in ~100 values. The full
results, samples included, go to ``raw/<stem>.json`` beside it, which git ignores.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from bench.harness import percentile

# Per scenario: the per-CR samples and the percentiles that replace them in the summary.
SAMPLES = {
    "latencies_deployment_s": "percentiles_deployment_s",
    "latencies_available_s": "percentiles_available_s",
}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _ratios(scenarios: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each scenario's time against the floor's and kopf's of the same (median) runs: ratios
    within a run are what the shared machine lets us compare."""
    floor, kopf = scenarios.get("floor", {}), scenarios.get("kopf", {})
    return {
        name: {
            "floor_deployments": _ratio(s.get("t_deployments"), floor.get("t_deployments")),
            "floor_available": _ratio(s.get("t_available"), floor.get("t_available")),
            "kopf_available": _ratio(kopf.get("t_available"), s.get("t_available")),
        }
        for name, s in scenarios.items()
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` without per-CR samples: each sample list becomes its 101 percentiles."""
    summary = copy.deepcopy(results)
    for runs in (summary.get("scenarios", {}), *summary.get("repetitions", [])):
        for s in runs.values():
            for samples, percentiles in SAMPLES.items():
                values = s.pop(samples, None)
                if values:
                    s[percentiles] = [round(percentile(values, q), 4) for q in range(101)]
    if {"floor", "kopf"} & set(summary.get("scenarios", {})):
        summary["ratios_to_peers"] = _ratios(summary["scenarios"])
    return summary


def cdf(scenario: dict[str, Any], samples: str) -> tuple[list[float], list[float]]:
    """The points of a latency CDF (seconds, fraction of CRs), from a scenario's samples when
    it has them (raw results) or else from its percentiles (a summary)."""
    values = sorted(scenario.get(samples) or [])
    if values:
        return values, [(i + 1) / len(values) for i in range(len(values))]
    points = scenario.get(SAMPLES[samples]) or []
    return list(points), [q / 100 for q in range(len(points))]


def dumps(results: dict[str, Any]) -> str:
    """Indented JSON with each list of numbers on one line (a diff shows which figure moved,
    and 101 percentiles stay one line)."""
    text = json.dumps(results, indent=1)
    return re.sub(r"\[([-+0-9.eE,\s]+)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def pipeline_workers(scenarios: dict[str, Any]) -> list[int]:
    """The reconciler counts of the ``pipeline-<n>`` scenarios, in order."""
    return sorted(
        int(name.split("-")[1]) for name in scenarios if re.fullmatch(r"pipeline-\d+", name)
    )
