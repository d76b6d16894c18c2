"""SIGTERM reaches a service that cannot connect yet: it exits at once (code 0) instead of
retrying NATS until Kubernetes' grace period runs out and SIGKILL follows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", ["watcher", "reconciler", "status"])
def test_sigterm_while_nats_is_unreachable_exits_promptly(service: str) -> None:
    nobody = free_port()  # nothing listens there
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memcached_operator.cli",
            service,
            "--nats-url",
            f"nats://127.0.0.1:{nobody}",
            "--health-port",
            str(free_port()),
        ],
        cwd=ROOT,
        env={**os.environ, "LOG_FORMAT": "json", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until it is retrying the connection (its first connect error is logged).
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        for line in proc.stderr:
            if "nats error" in line or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "the service exited before it was asked to"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0
    assert took < 5, f"{service} took {took:.1f}s to stop"
