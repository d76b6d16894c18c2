"""A service process runs with the garbage collector as shared/runtime/collector.py sets it:
what start-up made frozen, a young generation of 10,000 allocations."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

SERVICE = """
import asyncio, gc
from memcached_operator.shared.runtime import process

async def main(stop: asyncio.Event) -> None:
    print(gc.get_threshold(), gc.get_freeze_count() > 10_000)

raise SystemExit(process.run("collector-test", main))
"""


def test_a_service_process_collects_less_often_and_never_scans_what_start_up_made() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SERVICE], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "(10000, 10, 10) True"
