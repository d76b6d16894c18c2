"""The bench's CPU table carries the messages through nats-server per CR (bench/meters.py's
NatsTraffic), the hop count that nats-server's CPU follows."""

from __future__ import annotations

import pytest

from bench import report

pytestmark = pytest.mark.unit


def test_the_cpu_table_shows_nats_messages_per_cr() -> None:
    scenarios = {
        "pipeline-4": {
            "cpu_s": {"kube-apiserver": 50.0, "nats-server": 6.0, "bench-pipeline-4-watcher": 7.0},
            "nats_msgs_per_cr": {"in": 31.5, "out": 40.25},
            "nats_kb_per_cr": {"in": 40.0, "out": 12.5},
        },
        "go-32": {"cpu_s": {"kube-apiserver": 40.0, "bench-go-32-go-0": 9.0}},
    }
    rows = report._cpu_rows(scenarios)
    assert rows[0].endswith("| 31.5 / 40.2 (40.0 / 12.5 KB) |"), rows[0]
    assert rows[1].endswith("| - | - |"), rows[1]
