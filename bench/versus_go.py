"""This pipeline against the controller-runtime peer, in the ratios issue 22's acceptance is
stated in: 4 reconcilers x 8 against the Go peer with 32 workers, within each repetition
(ratios within one run are what a shared machine lets us compare), and their median.

CPU counts each operator's own processes from the first create to done: ours are the watcher,
the status service, the reconcilers and nats-server (which only this pipeline needs); the Go
peer's are its replicas. Tracing on vs off is ours traced ÷ ours untraced in the same repetition.
"""

from __future__ import annotations

from typing import Any

from bench.figures import median_of

OURS, PEER = "pipeline-4", "go-32"
TRACED = "pipeline-4-traced"  # ours with tracing on, in the same repetition
# Acceptance of issue 22: ours ÷ Go at most this.
LIMITS = {"available": 1.0, "deployments": 0.8, "cpu": 1.5, "tracing": 1.10}
_CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def operator_cpu(scenario: dict[str, Any], *, with_nats: bool) -> float | None:
    """CPU seconds of the contender's own processes (and nats-server when ``with_nats``)."""
    cpu: dict[str, float] = scenario.get("cpu_s") or {}
    if not cpu:
        return None
    own = sum(v for k, v in cpu.items() if k not in (*_CONTROL_PLANE, "nats-server"))
    return round(own + (cpu.get("nats-server", 0.0) if with_nats else 0.0), 2)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ratios(run: dict[str, Any]) -> dict[str, float | None]:
    """Ours ÷ Go in one repetition: all Available, every Deployment correct, operator CPU; and
    ours traced ÷ ours untraced to all Available."""
    ours, peer = run.get(OURS) or {}, run.get(PEER) or {}
    traced = run.get(TRACED) or {}
    return {
        "tracing": _ratio(traced.get("t_available"), ours.get("t_available")),
        "available": _ratio(ours.get("t_available"), peer.get("t_available")),
        "deployments": _ratio(ours.get("t_deployments"), peer.get("t_deployments")),
        "cpu": _ratio(operator_cpu(ours, with_nats=True), operator_cpu(peer, with_nats=False)),
    }


def summary(repetitions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Each repetition's ratios, their medians, and which limits hold."""
    runs = [ratios(rep) for rep in repetitions if OURS in rep and PEER in rep]
    if not runs:
        return None
    median: dict[str, float | None] = {}
    for key in ("available", "deployments", "cpu", "tracing"):
        median[key] = median_of([r[key] for r in runs])
    return {
        "ours": OURS,
        "peer": PEER,
        "runs": runs,
        "median": median,
        "limits": LIMITS,
        "met": {k: (v is not None and v <= LIMITS[k]) for k, v in median.items()},
    }


def markdown(results: dict[str, Any]) -> list[str]:
    versus = results.get("versus_go")
    if not versus:
        return []
    names = {
        "available": "all Available",
        "deployments": "every Deployment correct",
        "cpu": "operator CPU-s (ours incl. nats-server)",
        "tracing": "tracing on ÷ off (all Available)",
    }
    lines = [
        f"Against the controller-runtime peer: {versus['ours']} ÷ {versus['peer']} "
        "(per repetition, and the median):",
        "",
        "| ratio | per repetition | median | limit | met |",
        "|---|---|---:|---:|---|",
    ]
    for key, label in names.items():
        each = ", ".join(f"{r[key]:.2f}" if r.get(key) is not None else "-" for r in versus["runs"])
        value = versus["median"].get(key)
        lines.append(
            f"| {label} | {each} | "
            f"{'-' if value is None else f'{value:.2f}x'} | ≤ {versus['limits'][key]:.2f}x | "
            f"{'yes' if versus['met'].get(key) else 'no'} |"
        )
    lines.append("")
    return lines
