"""`python -m bench.ab --base REV`: the pipeline's burst, this checkout against a revision, interleaved.

This is how a change to the services is measured (bench/README.md, "Fewer wake-ups"): the
machine is shared and its load moves by the minute, so one run of each side says little, and a
comparison is only fair within one run of this command. It brings up one local cluster and runs
the pipeline's scenario (1 watcher, 1 status service, ``--workers`` reconciler processes; the
same measurement as bench.run's ``pipeline-<workers>`` rows, :meth:`bench.scenarios.Bench.scenario`)
in the order B A A B (``--pairs 2``; more pairs repeat it), each run in a namespace of its own.
A is ``git archive <REV>``; B is the working tree as it stands, uncommitted changes included.
Only the code the services import differs: each side's processes import ``memcached_operator``
from a view of that side's folders (symlinks laid out as ``pyproject.toml``'s package-dir maps
them), put first on their ``PYTHONPATH``; the harness, the cluster and the measurement are this
checkout's for both.

It prints a Markdown table: per run, the CPU-seconds of each of the contender's processes, of
nats-server and of the control plane, from the first create until every CR is Available, and the
times to every Deployment correct and every CR Available; then the median of each side and B ÷ A.
``--out NAME`` also writes it to bench/results/NAME.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import io
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import nats

from bench import report
from bench.cluster import BenchCluster
from bench.contenders import REPO, Pipeline
from bench.run import parse_args as bench_args
from bench.scenarios import Bench, log
from deploy.local.layout import Layout, block_size, free_base_port
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.kube.client import KubeClient

RESULTS = REPO / "bench" / "results"
PACKAGE = "memcached_operator"


def package_view(tree: Path, into: Path) -> Path:
    """A directory that holds ``memcached_operator`` as ``tree``'s folders make it (symlinks
    after ``pyproject.toml``'s package-dir), to put first on a process's PYTHONPATH."""
    mapping: dict[str, str] = tomllib.loads((tree / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-dir"]
    root = into / PACKAGE
    root.mkdir(parents=True)
    for entry in sorted((tree / mapping[PACKAGE]).iterdir()):
        if entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        if package != PACKAGE:
            link = root / package.removeprefix(f"{PACKAGE}.")
            link.unlink(missing_ok=True)
            link.symlink_to(tree / folder)
    return into


def export(rev: str, into: Path) -> tuple[Path, str]:
    """The tree of ``rev`` (``git archive``) in ``into``, and the commit it names."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True)
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into, commit


def order(pairs: int) -> list[str]:
    """B A A B, and again for every further pair (each side first as often as the other)."""
    return [side for i in range(pairs) for side in (("B", "A") if i % 2 == 0 else ("A", "B"))]


def summarize(runs: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], dict[str, float]]:
    """Table rows per run, and each side's medians (keys ``<side>:<measure>``)."""
    rows: list[str] = []
    values: dict[str, list[float]] = {}
    for i, (side, s) in enumerate(runs, start=1):
        plane, nats, own = report.cpu_split(s.get("cpu_s") or {})
        ours = sum(own.values())
        by_process = ", ".join(f"{k} {v:.2f}" for k, v in own.items())
        row = {
            "contender": ours,
            "nats": nats,
            "contender + nats": ours + nats,
            "control plane": plane,
            "deployments": s.get("t_deployments") or float("nan"),
            "available": s.get("t_available") or float("nan"),
        }
        for k, v in row.items():
            values.setdefault(f"{side}:{k}", []).append(v)
        load = "→".join(f"{x:.1f}" for x in s.get("load_avg_1m") or [])
        rows.append(
            f"| {i} {side} | {ours:.2f} ({by_process}) | {nats:.2f} | {ours + nats:.2f} "
            f"| {plane:.1f} | {row['deployments']:.1f} | {row['available']:.1f} | {load} |"
        )
    return rows, {k: statistics.median(v) for k, v in values.items()}


def markdown(
    runs: list[tuple[str, dict[str, Any]]], *, base: str, workers: int, n: int, started: str
) -> str:
    rows, med = summarize(runs)
    measures = ("contender", "nats", "contender + nats", "control plane")
    out = [
        f"# A/B: pipeline-{workers}, {n} CRs; A = {base}, B = the working tree",
        "",
        "| run | contender CPU-s (by process) | nats-server | contender + nats "
        "| control plane | Deployments correct (s) | all Available (s) | load 1m |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "| median | " + " | ".join(measures) + " | Deployments correct | all Available |",
        "|---|" + "---:|" * (len(measures) + 2),
    ]
    keys = (*measures, "deployments", "available")
    for side in ("A", "B"):
        out.append(f"| {side} | " + " | ".join(f"{med[f'{side}:{k}']:.2f}" for k in keys) + " |")
    ratios = [med[f"B:{k}"] / med[f"A:{k}"] if med[f"A:{k}"] else float("nan") for k in keys]
    out.append("| B ÷ A | " + " | ".join(f"{r:.3f}" for r in ratios) + " |")
    out += [
        "",
        f"Started {started}: `python -m bench.ab --base {base} --n {n} --workers {workers}`, "
        "every run on one local cluster in the order of the table; CPU-seconds from the first "
        "create until every CR is Available; load 1m: the machine's load average (2 cores) at "
        "a run's start and end.",
    ]
    return "\n".join(out) + "\n"


async def without_events_cap(layout: Layout) -> None:
    """Take the events stream's per-object cap (6d425c5) off again: the services of a base
    from before it count the cap as a misshaped stream and never get ready, and a burst never
    reaches it (a few records per object), so both sides run on the streams as they were."""
    creds = layout.nats_credentials("admin")
    nc = await nats.connect(
        creds["NATS_URL"], user=creds.get("NATS_USER"), password=creds.get("NATS_PASSWORD")
    )
    try:
        js = nc.jetstream()
        config = (await js.stream_info(EVENTS_STREAM)).config
        await js.update_stream(dataclasses.replace(config, max_msgs_per_subject=-1))
    finally:
        await nc.close()


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="mcop-ab-"))
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    a_tree, commit = export(args.base, work / "a")
    views = {
        "A": package_view(a_tree, work / "view-a"),
        "B": package_view(REPO, work / "view-b"),
    }
    layout = Layout(work / "cluster", base_port=free_base_port(block_size(1)), nodes=4)
    cluster = BenchCluster(layout)
    bench: Bench | None = None
    runs: list[tuple[str, dict[str, Any]]] = []
    try:
        await asyncio.to_thread(cluster.up)
        await without_events_cap(layout)
        kube = await KubeClient.connect(str(layout.kubeconfig))
        try:
            bench = Bench(bench_args(["--n", str(args.n)]), cluster, kube)
            for i, side in enumerate(order(args.pairs), start=1):
                contender = bench.contender(
                    Pipeline,
                    f"ab-{i}-{side.lower()}",
                    workers=args.workers,
                    env={"PYTHONPATH": f"{views[side]}:{REPO}"},
                )
                result = await bench.scenario(f"{side} (run {i})", contender)
                runs.append((side, result))
                log(f"run {i} ({side}): all Available in {result.get('t_available')} s")
        finally:
            await kube.close()
    finally:
        if bench is not None:
            for c in bench.started:
                c.stop()
        await asyncio.to_thread(cluster.down)
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(runs, base=commit, workers=args.workers, n=args.n, started=started)
    print(text)
    if args.out:
        path = RESULTS / f"{args.out}.md"
        path.write_text(text)
        log(f"wrote {path}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    p.add_argument("--base", required=True, help="the git revision to compare against (A)")
    p.add_argument("--n", type=int, default=1000, help="CRs per run (default 1000)")
    p.add_argument("--workers", type=int, default=4, help="reconciler processes (default 4)")
    p.add_argument("--pairs", type=int, default=2, help="pairs of runs (default 2: B A A B)")
    p.add_argument("--out", default="", help="also write bench/results/<OUT>.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
