"""`python -m bench.watcher_cpu` runs the watcher's emit path against a real nats-server and
prints CPU per change; every change it fed is in the events stream afterwards."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.harness import REPO

pytestmark = pytest.mark.integration


def test_it_stores_every_change_and_prints_cpu_per_change() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.watcher_cpu", "--n", "3", "--repeat", "1", "--rate", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert re.search(r"run 1: 30 changes, 30 stored, watcher \d+ µs CPU per change", out), out
