"""Writing the results: a summary JSON (bench/summary.py; the raw samples in the ignored raw/),
a Markdown table with ratios, and the plots drawn from the summary (bench/plots.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench import summary, versus_go
from bench.plots import plots, scaling_plot


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def _rss_markdown(results: dict[str, Any]) -> str:
    meta, rss = results["meta"], results["rss_10k"]
    source = meta.get("source") or {}
    return "\n".join(
        [
            f"# Service memory with {rss['crs']} Memcached CRs in the cluster",
            "",
            "| process | peak RSS (MB) |",
            "|---|---:|",
            *(f"| {role} | {mb:.0f} |" for role, mb in rss["peak_rss_mb"].items()),
            "",
            f"1 watcher, 1 reconciler (--concurrency {meta['concurrency']}), 1 status service; "
            f"{rss['crs']} CRs (spec.size 0, so the Deployments need no pods) created "
            f"{meta['create_concurrency']} at a time; {rss['deployments_correct']} Deployments "
            f"correct after {rss['seconds']} s, measured until 10 s later. Peak RSS: max of "
            "VmRSS/VmHWM from /proc, polled every second. "
            f"Date {meta['date']}; {meta['machine']['cores']} cores; load average at start "
            f"{meta['machine']['load_avg_at_start']}; services from commit "
            f"{source.get('commit')}.",
            "",
        ]
    )


_CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def _is_nats(name: str) -> bool:
    # "nats-server", and "nats-server-1", "nats-server-2" of a NATS cluster
    return name == "nats-server" or name.startswith("nats-server-")


def cpu_split(cpu: dict[str, float]) -> tuple[float, float, dict[str, float]]:
    """Control plane, nats-server (every node of a cluster), and the contender's processes."""
    own = {k: v for k, v in cpu.items() if k not in _CONTROL_PLANE and not _is_nats(k)}
    plane = sum(v for k, v in cpu.items() if k in _CONTROL_PLANE)
    return plane, sum(v for k, v in cpu.items() if _is_nats(k)), own


def _cpu_rows(scenarios: dict[str, Any]) -> list[str]:
    rows = []
    for name, s in scenarios.items():
        cpu: dict[str, float] = s.get("cpu_s") or {}
        if not cpu:
            continue
        plane, nats, own = cpu_split(cpu)
        by_process = ", ".join(f"{k} {v:.1f}" for k, v in own.items())
        early = s.get("cpu_s_to_deployments") or {}
        if early:
            e_plane, e_nats, e_own = cpu_split(early)
            until = f"{e_plane:.1f} / {e_nats:.1f} / {sum(e_own.values()):.1f}"
        else:
            until = "-"
        msgs = s.get("nats_msgs_per_cr") or {}
        kb = s.get("nats_kb_per_cr") or {}
        traffic = (
            f"{_fmt(msgs.get('in'), 1)} / {_fmt(msgs.get('out'), 1)} "
            f"({_fmt(kb.get('in'), 1)} / {_fmt(kb.get('out'), 1)} KB)"
            if msgs
            else "-"
        )
        rows.append(
            f"| {name} | {plane:.1f} | {nats:.1f} | {sum(own.values()):.1f} ({by_process}) "
            f"| {until} | {traffic} |"
        )
    return rows


def _spread(values: list[float] | None) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    median = (
        ordered[len(ordered) // 2]
        if len(ordered) % 2
        else ((ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2)
    )
    return f"{median:.2f}x ({ordered[0]:.2f} to {ordered[-1]:.2f})"


def _repetition_lines(results: dict[str, Any]) -> list[str]:
    """The ratios within each repetition (median, min to max) and every run's times."""
    reps: list[dict[str, Any]] = results.get("repetitions") or []
    ratios: dict[str, dict[str, list[float]]] = results.get("ratios") or {}
    if len(reps) < 2:
        return []
    if not any(any(r.values()) for r in ratios.values()):
        # No floor or kopf to compare with (the scaling sweep): only the runs.
        lines = [
            f"Repeated {len(reps)} times, interleaved; the tables show each scenario's median "
            "run (by time to correct Deployments).",
        ]
        ratios = {}
    else:
        lines = [
            f"Repeated {len(reps)} times, interleaved; the table above shows each scenario's "
            "median run (by time to all Available). Ratios within each repetition, median "
            "(min to max):",
            "",
            "| scenario | this ÷ floor (Deployments) | this ÷ floor (Available) "
            "| kopf ÷ this (Available) |",
            "|---|---:|---:|---:|",
        ]
    for name, r in ratios.items():
        lines.append(
            f"| {name} | {_spread(r.get('floor_deployments'))} | "
            f"{_spread(r.get('floor_available'))} | {_spread(r.get('kopf_available'))} |"
        )
    lines += ["", "Every run, Deployments correct / all Available (s):", ""]
    for name in reps[0]:
        runs = ", ".join(
            f"{_fmt(rep[name].get('t_deployments'))} / {_fmt(rep[name].get('t_available'))}"
            for rep in reps
            if name in rep
        )
        lines.append(f"- {name}: {runs}")
    lines.append("")
    return lines


def _scaling_lines(results: dict[str, Any]) -> list[str]:
    """The fleet's sweep: throughput against workers, and where each worker's time went."""
    scenarios = results["scenarios"]
    scaling = results["scaling"]
    runs = scaling.get("speedup_runs") or {}
    lines = [
        "Reconciler fleet scaling (CRs/s to correct Deployments; each worker one request at a "
        "time; per worker, from the first create until every Deployment is correct: "
        "reconciles, and the share of that time its handler ran, min-max over the workers; "
        "mean API call: of the reconciler's GET memcacheds and PATCH deployments):",
        "",
        "| workers | CRs/s | vs 1 worker (median of the runs') | ideal | each run's speed-up | reconciles per worker "
        "| busy | mean reconcile (ms) | mean API call (ms) |",
        "|---:|---:|---:|---:|---|---|---|---:|---:|",
    ]
    for w in summary.pipeline_workers(scenarios):
        s = scenarios[f"pipeline-{w}"]
        wall = s.get("t_deployments") or 0.0
        per = {
            role: {**row, "busy_pct": 100 * (row.get("busy_s") or 0) / wall if wall else None}
            for role, row in ((s.get("breakdown") or {}).get("reconcile_workers") or {}).items()
        }

        def span(key: str, digits: int = 0, rows: dict[str, dict[str, Any]] = per) -> str:
            values = [r[key] for r in rows.values() if r.get(key) is not None]
            if not values:
                return "-"
            lo, hi = min(values), max(values)
            return f"{lo:.{digits}f}" if lo == hi else f"{lo:.{digits}f}-{hi:.{digits}f}"

        api = (s.get("breakdown") or {}).get("api_mean_ms_by_call") or {}
        calls = [api[c] for c in ("GET memcacheds", "PATCH deployments") if c in api]
        each = runs.get(str(w)) or []
        speedup = (scaling.get("speedup") or {}).get(str(w))
        lines.append(
            f"| {w} | {_fmt(s.get('crs_per_s'))} | "
            f"{_fmt(speedup, 2)}x"
            f" | {w}x | {', '.join(f'{x:.2f}x' for x in each if x) or '-'} | {span('runs')} | "
            f"{span('busy_pct')} % | "
            f"{_fmt((s.get('breakdown') or {}).get('reconcile', {}).get('mean_run_ms'), 0)} | "
            f"{_fmt(sum(calls) / len(calls), 0) if calls else '-'} |"
        )
    lines.append("")
    return lines


def markdown(results: dict[str, Any]) -> str:
    if "rss_10k" in results and not results["scenarios"]:
        return _rss_markdown(results)
    meta = results["meta"]
    scenarios = results["scenarios"]
    kopf = scenarios.get("kopf", {})
    floor = scenarios.get("floor", {})
    with_load = any("load_avg_1m" in s for s in scenarios.values())
    # Runs since the CR owns a Service and a PDB too: the time until all of them are correct.
    with_objects = any("t_objects" in s for s in scenarios.values())
    lines = [
        f"# Benchmark: {meta['n']} Memcached CRs, API latency {meta['latency_ms']:g} ms",
        "",
        "| scenario | CRs created (s) | Deployments correct (s)"
        + (" | all objects correct (s)" if with_objects else "")
        + " | all Available (s) | → Deployment p50 / p99 (ms)"
        " | → Available p50 / p99 (ms) | CRs/s | reconciles/s | API requests / CR"
        " | peak RSS (MB) | kopf ÷ this (Available) | this ÷ floor (Available) |"
        + (" load 1m |" if with_load else ""),
        "|---|---:|---:|"
        + ("---:|" if with_objects else "")
        + "---:|---:|---:|---:|---:|---:|---|---:|---:|"
        + ("---|" if with_load else ""),
    ]
    if not scenarios:
        lines = lines[:2]
    for name, s in scenarios.items():
        rss = ", ".join(f"{role} {mb:.0f}" for role, mb in s.get("peak_rss_mb", {}).items())
        lines.append(
            "| "
            + " | ".join(
                [
                    name + ("" if s.get("complete") else " (incomplete)"),
                    _fmt(s.get("t_create")),
                    _fmt(s.get("t_deployments")),
                    *([_fmt(s.get("t_objects"))] if with_objects else []),
                    _fmt(s.get("t_available")),
                    f"{_fmt(s.get('p50_deployment_ms'), 0)} / {_fmt(s.get('p99_deployment_ms'), 0)}",
                    f"{_fmt(s.get('p50_available_ms'), 0)} / {_fmt(s.get('p99_available_ms'), 0)}",
                    _fmt(s.get("crs_per_s")),
                    _fmt(s.get("reconciles_per_s")),
                    _fmt(s.get("api_requests_per_cr"), 2),
                    rss,
                    _ratio(kopf.get("t_available"), s.get("t_available")),
                    _ratio(s.get("t_available"), floor.get("t_available")),
                ]
                + (["→".join(f"{x:.1f}" for x in s.get("load_avg_1m", []))] if with_load else [])
            )
            + " |"
        )
    lines.append("")
    cpu_rows = _cpu_rows(scenarios)
    if cpu_rows:
        lines += [
            "CPU seconds each scenario cost (user + system, from /proc, first create to done; "
            "the last column only up to the moment every Deployment was correct):",
            "",
            "| scenario | control plane | nats-server | contender (by process) "
            "| until Deployments correct: control plane / nats / contender "
            "| NATS messages / CR in / out (KB) |",
            "|---|---:|---:|---|---:|---:|",
            *cpu_rows,
            "",
        ]
    lags = [
        f"{name} {_fmt(s.get('t_deployments_available'))} s, "
        f"{_fmt(s.get('p50_status_lag_ms'), 0)} / {_fmt(s.get('p99_status_lag_ms'), 0)} ms"
        for name, s in scenarios.items()
        if s.get("p50_status_lag_ms") is not None
    ]
    if lags:
        lines += [
            "Every Deployment itself Available (observed, all replicas ready, its Available "
            "condition True), and then each CR's Available p50 / p99 after its Deployment's (the "
            "operator's own part of the wait): " + "; ".join(lags) + ".",
            "",
        ]
    lines += versus_go.markdown(results)
    lines += _repetition_lines(results)
    scaling = results.get("scaling")
    if scaling and meta.get("scaling"):
        lines += _scaling_lines(results)
    elif scaling and scaling.get("speedup_1_to_4"):
        two = scaling.get("speedup_1_to_2")
        lines.append(
            f"Horizontal scaling (CRs/s to correct Deployments): 1 → 4 workers "
            f"**{scaling['speedup_1_to_4']:.2f}x**" + (f" (1 → 2: {two:.2f}x)." if two else ".")
        )
    tracing = results.get("tracing")
    if tracing:
        lines.append(
            f"Tracing on (always-on sampler, OTLP/HTTP export of {tracing['spans']} spans) vs off, "
            f"4 workers, time to all Available: **{tracing['ratio_available']:.2f}x** "
            f"(Deployments: {tracing['ratio_deployments']:.2f}x)"
            + (
                " — the median of "
                + ", ".join(f"{r:.2f}x" for r in tracing["runs_available"] if r is not None)
                + ", each against the untraced run of its repetition."
                if len(tracing.get("runs_available") or []) > 1
                else "."
            )
        )
        per_cr = tracing.get("spans_per_cr_by_name") or {}
        if per_cr:
            lines.append(
                "Spans per CR by service and name: "
                + ", ".join(f"{name} {count:g}" for name, count in per_cr.items())
                + "."
            )
    watcher = results.get("watcher")
    if watcher:
        lines.append(
            f"Watcher throughput: {watcher['changes']} changes → stream in "
            f"{watcher['seconds']:.1f} s = **{watcher['events_per_s']:.0f} events/s** "
            f"(the API took the patches at {watcher['api_patches_per_s']:.0f}/s; the stream "
            f"held the last one {watcher['lag_after_last_patch_s'] * 1000:.0f} ms after its "
            f"patch returned)."
        )
    rss10k = results.get("rss_10k")
    if rss10k:
        lines.append(
            f"Worker RSS with {rss10k['crs']} CRs in the cluster: "
            + ", ".join(f"{k} {v:.0f} MB" for k, v in rss10k["peak_rss_mb"].items())
            + "."
        )
    lines += [
        "",
        "## How it was measured",
        "",
        f"- Date {meta['date']}; machine: {meta['machine']['cpu']}, "
        f"{meta['machine']['cores']} cores, {meta['machine']['memory_gb']} GB; load average "
        f"at start {meta['machine']['load_avg_at_start']}; other work may share the machine.",
        f"- One local cluster for every scenario (etcd, kube-apiserver, controller-manager, "
        f"scheduler, kwok with {meta['nodes']} fake nodes, nats-server), each scenario in its own "
        "namespace, in the order of the table; a scenario's namespace is deleted, and gone with "
        "everything in it, before the next one starts.",
        f"- N = {meta['n']} CRs (spec.size {meta.get('size', 1)}) created by a plain async "
        "client, "
        f"{meta['create_concurrency']} at a time; every time counts from the first create. "
        "CRs created: until the last create returned (the same client and requests in every "
        "scenario, so what differs is how much of the API server the contender leaves them). "
        "Per-object latency: from the create call's return to the harness's watch seeing the "
        "Deployment as desired (`matches(desired_deployment(cr))`), and the CR's "
        "Available=True for its generation. All objects correct (when shown): the Deployment, "
        "the headless Service and, from size 2, the PodDisruptionBudget each as desired "
        "(`matches` on the reconciler's own `desired_*`), and no PodDisruptionBudget below.",
        f"- This system: 1 watcher, 1 status (--concurrency {meta['status_concurrency']}), and "
        f"1/2/4 reconciler processes with --concurrency {meta['concurrency']} each. kopf: "
        "bench/peers/kopf_operator.py under `kopf run --standalone --namespace`. Floor: "
        f"bench/floor.py, one process, {meta['floor_concurrency']} requests at a time.",
        "- API requests per CR: the API server's own "
        "`apiserver_flowcontrol_dispatched_requests_total` for a FlowSchema that matches only "
        "the contender's user (delta from ready to done, divided by N): the same source for all.",
        "- CRs/s: N ÷ time until every Deployment is correct. reconciles/s: reconcile runs "
        "(this system's `controller_runtime_reconcile_total{controller=reconcile}`, kopf's "
        "handler runs, the floor's applies) ÷ the same time. Peak RSS: max of VmRSS/VmHWM "
        "from /proc, polled every 0.25 s. load 1m: the machine's 1-minute load average when "
        "the scenario started and ended (2 cores; other people's test suites share them).",
    ]
    source = meta.get("source")
    if source:
        dirty = source.get("uncommitted_service_files") or []
        lines.append(
            f"- Services from commit {source.get('commit')}"
            + (f" plus uncommitted changes to {', '.join(dirty)}" if dirty else "")
            + " (the tree read when each process started)."
        )
    observed = meta.get("load_avg_1m_observed")
    if observed:
        samples = ", ".join(f"{k} {v}" for k, v in observed.items() if k != "note")
        lines.append(f"- 1-minute load average during the run ({observed.get('note')}): {samples}.")
    if meta.get("scaling"):
        lines.append(
            "- Scaling sweep (`--scaling`): "
            + (
                "with the status service and the controller-manager's rollouts running."
                if meta.get("with_downstream")
                else "the reconciler fleet alone: 1 watcher and the reconcilers, no status "
                "service, and the controller-manager paused (SIGSTOP) from the first create "
                "until every Deployment is correct, so that no rollouts (ReplicaSets, pods, "
                "their status) compete with the fleet for the machine's cores; the Deployments "
                "are deleted before it continues. Time to correct Deployments only."
            )
        )
    if meta["latency_ms"]:
        lines.append(
            f"- Every contender reached the API server through bench/proxy.py, which delays "
            f"each client→server chunk by {meta['latency_ms']:g} ms (the harness did not)."
        )
    lines.append("")
    return "\n".join(lines)


def write(results: dict[str, Any], out_dir: Path, *, stem: str) -> list[Path]:
    """The summary ``<stem>.json`` (see bench/summary.py), its Markdown and plots, and the full
    results, per-CR samples included, in the ignored ``raw/<stem>.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if stem == "latest" else f"-{stem}"
    written = []
    if _has_samples(results):
        raw_path = out_dir / "raw" / f"{stem}.json"
        raw_path.parent.mkdir(exist_ok=True)
        raw_path.write_text(json.dumps(results))
        written.append(raw_path)
    results = summary.summarize(results)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(summary.dumps(results))
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(markdown(results))
    written += [json_path, md_path]
    if not results["scenarios"]:
        return written
    if results["meta"].get("scaling"):
        return [*written, scaling_plot(results, out_dir / f"{stem}.png")]
    return [*written, *plots(results, out_dir, suffix=suffix)]


def _has_samples(results: dict[str, Any]) -> bool:
    runs = (results.get("scenarios", {}), *results.get("repetitions", []))
    return any(s.get(key) for r in runs for s in r.values() for key in summary.SAMPLES)


if __name__ == "__main__":
    # Re-render the summary, Markdown and plots of a results file, a summary or a raw one:
    # python -m bench.report bench/results/latest.json (or bench/results/raw/latest.json)
    import sys

    path = Path(sys.argv[1])
    out_dir = path.parent.parent if path.parent.name == "raw" else path.parent
    for written in write(json.loads(path.read_text()), out_dir, stem=path.stem):
        print(written)
