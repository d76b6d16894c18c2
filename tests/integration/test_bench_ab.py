"""`python -m bench.ab`: each side's services import that side's code, and a run on a real
cluster prints both sides, their medians and B ÷ A."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ab import export, order, package_view
from bench.harness import REPO

pytestmark = pytest.mark.integration


def test_a_process_started_on_a_view_imports_that_trees_code(tmp_path: Path) -> None:
    tree, commit = export("HEAD", tmp_path / "a")
    assert commit and (tree / "services" / "watcher" / "informer.py").exists()
    # A mark only the exported tree has: the view, not this checkout's editable install.
    (tree / "services" / "ab_mark.py").write_text("SIDE = 'A'\n")
    view = package_view(tree, tmp_path / "view")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import memcached_operator.ab_mark as m, memcached_operator.shared.kube.client as c;"
            "print(m.SIDE, c.__file__)",
        ],
        env={**os.environ, "PYTHONPATH": f"{view}:{REPO}"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == "A"
    assert out[1] == str(view / "memcached_operator" / "shared" / "kube" / "client.py")


def test_runs_are_interleaved_each_side_first_as_often() -> None:
    assert order(1) == ["B", "A"]
    assert order(2) == ["B", "A", "A", "B"]
    assert order(3).count("A") == order(3).count("B") == 3


def test_a_small_run_prints_both_sides_and_their_ratio() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.ab",
            "--base",
            "HEAD",
            "--n",
            "10",
            "--workers",
            "1",
            "--pairs",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    assert re.search(r"^\| 1 B \| \d+\.\d\d \(watcher ", out, re.M), out
    assert re.search(r"^\| 2 A \| \d+\.\d\d \(watcher ", out, re.M), out
    assert re.search(r"^\| B ÷ A \| \d+\.\d{3} \|", out, re.M), out
