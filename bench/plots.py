"""The bench's plots, drawn from a results summary: per-CR latency CDFs and throughput against
reconciler processes (with the ideal line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import summary


def plots(results: dict[str, Any], out_dir: Path, *, suffix: str = "") -> list[Path]:
    scenarios = results["scenarios"]
    latency_png = out_dir / f"latency{suffix}.png"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in (
        (axes[0], "latencies_deployment_s", "CR created → Deployment correct"),
        (axes[1], "latencies_available_s", "CR created → Available=True"),
    ):
        for name, s in scenarios.items():
            xs, ys = summary.cdf(s, key)
            if xs:
                ax.plot(xs, ys, label=name)
        ax.set_title(title)
        ax.set_xlabel("latency (s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of CRs")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"Per-object latency, N={results['meta']['n']}, "
        f"API latency {results['meta']['latency_ms']:g} ms"
    )
    fig.tight_layout()
    fig.savefig(latency_png, dpi=110)
    plt.close(fig)

    return [latency_png, scaling_plot(results, out_dir / f"scaling{suffix}.png")]


def scaling_plot(results: dict[str, Any], scaling_png: Path) -> Path:
    scenarios = results["scenarios"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    workers = [
        w
        for w in summary.pipeline_workers(scenarios)
        if scenarios[f"pipeline-{w}"].get("crs_per_s")
    ]
    tput = [scenarios[f"pipeline-{w}"]["crs_per_s"] for w in workers]
    if workers:
        ax.plot(workers, tput, "o-", label="this system")
        ax.plot(workers, [tput[0] * w for w in workers], ":", color="gray", label="ideal (linear)")
    for name, style in (("kopf", "--"), ("floor", "-.")):
        if scenarios.get(name, {}).get("crs_per_s"):
            ax.axhline(
                scenarios[name]["crs_per_s"],
                linestyle=style,
                color="C3" if name == "kopf" else "C2",
                label=name,
            )
    ax.set_xticks(workers or [1, 2, 4])
    ax.set_xlabel("reconciler processes")
    ax.set_ylabel("CRs/s to correct Deployments")
    ax.set_title(f"Throughput against workers (API latency {results['meta']['latency_ms']:g} ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(scaling_png, dpi=110)
    plt.close(fig)
    return scaling_png
