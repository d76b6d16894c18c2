"""The figures a scenario records, from the contenders' Prometheus metrics, and the ones taken
across repetitions (the median run, each repetition's ratios, the scaling speed-ups)."""

from __future__ import annotations

import statistics
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.harness import metric_sum


def scaling_summary(
    scenarios: dict[str, Any], repetitions: list[dict[str, Any]], workers: list[int]
) -> dict[str, Any] | None:
    """CRs/s per worker count (the median runs') and the speed-up over 1 worker: the median
    over the repetitions of each one's own ratio (ratios within one run are what a shared
    machine lets us compare). Keys are strings, as they read back from the JSON."""
    rates = {str(w): scenarios.get(f"pipeline-{w}", {}).get("crs_per_s") for w in workers}
    if not rates.get("1") or len(rates) < 2:
        return None
    runs = {
        str(w): [
            ratio(
                rep.get(f"pipeline-{w}", {}).get("crs_per_s"),
                rep.get("pipeline-1", {}).get("crs_per_s"),
            )
            for rep in repetitions
        ]
        for w in workers
    }
    speedup = {
        w: round(statistics.median(xs), 3) if (xs := [x for x in r if x]) else None
        for w, r in runs.items()
    }
    return {
        "crs_per_s": rates,
        "speedup": speedup,
        "speedup_runs": runs,
        "speedup_1_to_2": speedup.get("2"),
        "speedup_1_to_4": speedup.get("4"),
    }


def median_runs(repetitions: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario, the repetition whose time to all Available is the median (a real run,
    so all of its figures belong together); the only one when there is one."""
    out: dict[str, Any] = {}
    for name in repetitions[0]:
        runs = sorted(
            (rep[name] for rep in repetitions if name in rep),
            # The scaling sweep does not wait for Available: its time to Deployments then.
            key=lambda r: r.get("t_available") or r.get("t_deployments") or float("inf"),
        )
        out[name] = runs[(len(runs) - 1) // 2]
    return out


def ratio_spread(repetitions: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Each pipeline scenario's ratios to the floor and to kopf, one per repetition: ratios
    within one repetition are what the noisy machine lets us compare."""
    spread: dict[str, dict[str, list[float]]] = {}
    for rep in repetitions:
        floor, kopf = rep.get("floor", {}), rep.get("kopf", {})
        for name, s in rep.items():
            if not name.startswith("pipeline"):
                continue
            ratios = spread.setdefault(name, {})
            pairs = {
                "floor_deployments": ratio(s.get("t_deployments"), floor.get("t_deployments")),
                "floor_available": ratio(s.get("t_available"), floor.get("t_available")),
                "kopf_available": ratio(kopf.get("t_available"), s.get("t_available")),
            }
            for key, value in pairs.items():
                if value is not None:
                    ratios.setdefault(key, []).append(value)
    return spread


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or value != value else round(value, digits)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _mean(metrics: dict[str, str], name: str, controller: str, label: str) -> float | None:
    total = sum(metric_sum(t, f"{name}_sum", **{label: controller}) for t in metrics.values())
    count = sum(metric_sum(t, f"{name}_count", **{label: controller}) for t in metrics.values())
    return round(total / count * 1000, 1) if count else None


def breakdown(metrics: dict[str, str]) -> dict[str, Any]:
    """Where this system's time goes, from its own metrics (means in ms, counts)."""
    out: dict[str, Any] = {}
    for controller in ("reconcile", "status"):
        out[controller] = {
            "runs": sum(
                metric_sum(t, "controller_runtime_reconcile_total", controller=controller)
                for t in metrics.values()
            ),
            "mean_run_ms": _mean(
                metrics, "controller_runtime_reconcile_time_seconds", controller, "controller"
            ),
            "mean_queue_wait_ms": _mean(
                metrics, "workqueue_queue_duration_seconds", controller, "name"
            ),
            "lease_contention": sum(
                metric_sum(t, "mcop_lease_contention_total", controller=controller)
                for t in metrics.values()
            ),
            "superseded": sum(
                metric_sum(t, "mcop_workqueue_superseded_total", controller=controller)
                for t in metrics.values()
            ),
        }
    out["api_requests_by_service"] = {
        role: metric_sum(text, "mcop_kube_api_requests_total") for role, text in metrics.items()
    }
    out["api_requests_by_call"] = _by_labels(
        metrics, "mcop_kube_api_requests_total", "verb", "resource"
    )
    sums = _by_labels(metrics, "mcop_kube_api_request_duration_seconds_sum", "verb", "resource")
    counts = _by_labels(metrics, "mcop_kube_api_request_duration_seconds_count", "verb", "resource")
    out["api_mean_ms_by_call"] = {
        call: round(sums.get(call, 0.0) / n * 1000, 1) for call, n in counts.items() if n
    }
    out["status_refreshes"] = _by_labels(metrics, "mcop_status_writes_total", "result")
    out["status_refreshes_by_origin"] = _by_labels(
        metrics, "mcop_status_refreshes_by_origin_total", "origin", "result"
    )
    out["pod_reads"] = _by_labels(metrics, "mcop_pod_reads_total", "source")
    return {k: v for k, v in out.items() if v}


def worker_rows(
    start: dict[str, str], done: dict[str, str], controller: str
) -> dict[str, dict[str, float | None]]:
    """Per worker process of ``controller``, from the first create until done: its runs, its
    mean wait from publication to delivery, for the lease, and to the handler's start (ms), the
    seconds spent in handlers (busy) and the slot-seconds it waited for a request (idle):
    where a request waits when adding workers adds nothing."""
    out: dict[str, dict[str, float | None]] = {}
    for role, text in sorted(done.items()):
        before = start.get(role, "")

        def delta(name: str, text: str = text, before: str = before) -> float:
            return metric_sum(text, name, controller=controller) - metric_sum(
                before, name, controller=controller
            )

        runs = delta("controller_runtime_reconcile_total")
        if not runs:
            continue
        row: dict[str, float | None] = {"runs": runs}
        for key, name in (
            ("delivery_ms", "mcop_workqueue_delivery_duration_seconds"),
            ("lease_ms", "mcop_workqueue_lease_wait_seconds"),
            ("queue_ms", "mcop_workqueue_queue_duration_seconds"),
        ):
            count = delta(f"{name}_count")
            row[key] = round(delta(f"{name}_sum") / count * 1000, 1) if count else None
        row["busy_s"] = round(delta("controller_runtime_reconcile_time_seconds_sum"), 2)
        row["idle_s"] = round(delta("mcop_workqueue_idle_seconds_total"), 2)
        out[role] = row
    return out


def _by_labels(metrics: dict[str, str], metric: str, *labels: str) -> dict[str, float]:
    """A counter's total over all processes, by the values of ``labels`` ("GET pods": 12)."""
    totals: dict[str, float] = {}
    for text in metrics.values():
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name != metric:
                    continue
                key = " ".join(sample.labels.get(label, "") for label in labels)
                totals[key] = totals.get(key, 0.0) + sample.value
    return {k: v for k, v in sorted(totals.items()) if v}


def reconcile_runs(name: str, metrics: dict[str, str], n: int) -> float | None:
    if name == "floor":
        return float(n)
    if name.startswith("go-"):
        return sum(
            metric_sum(text, "controller_runtime_reconcile_total", controller="memcached")
            for text in metrics.values()
        )
    if name == "kopf":
        return metric_sum(
            metrics.get("kopf", ""), "bench_kopf_reconcile_total", handler="reconcile"
        )
    return sum(
        metric_sum(text, "controller_runtime_reconcile_total", controller="reconcile")
        for role, text in metrics.items()
        if role.startswith("reconciler")
    )


def median_of(values: list[float | None]) -> float | None:
    """The median of the known values (ratios of runs that finished), None without any."""
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def span_delta(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    """The spans one traced run exported: the OTLP receiver's counts after it less before it,
    in all, by service, and per CR by service and span name (largest first)."""

    def less(key: str) -> dict[str, int]:
        old = before.get(key) or {}
        return {
            k: v - old.get(k, 0) for k, v in (after.get(key) or {}).items() if v - old.get(k, 0)
        }

    by_name = less("by_name")
    return {
        "total": int(after.get("total", 0)) - int(before.get("total", 0)),
        "by_service": less("spans"),
        "per_cr_by_name": {
            name: round(count / n, 2)
            for name, count in sorted(by_name.items(), key=lambda item: -item[1])
        },
    }


def tracing_summary(repetitions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Tracing on ÷ off within each repetition (pipeline-4-traced against pipeline-4), the
    median of those, and the spans of the median traced run."""
    pairs = [
        (rep["pipeline-4-traced"], rep["pipeline-4"])
        for rep in repetitions
        if "pipeline-4-traced" in rep and "pipeline-4" in rep
    ]
    if not pairs:
        return None
    available = [ratio(on.get("t_available"), off.get("t_available")) for on, off in pairs]
    deployments = [ratio(on.get("t_deployments"), off.get("t_deployments")) for on, off in pairs]
    median_traced = median_runs([{"t": on} for on, _ in pairs])["t"]
    spans = median_traced.get("spans") or {}
    return {
        "runs_available": available,
        "runs_deployments": deployments,
        "ratio_available": median_of(available),
        "ratio_deployments": median_of(deployments),
        "spans": spans.get("total", 0),
        "spans_by_service": spans.get("by_service", {}),
        "spans_per_cr_by_name": spans.get("per_cr_by_name", {}),
    }
