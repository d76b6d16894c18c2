"""chaos/status_writes.py: which status writes of a CR the API server's audit log shows as
accepted, refused with a conflict, and accepted two at once (what chaos --nats-nodes 3 fails
on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.status_writes import overlapping, status_write_spans

pytestmark = pytest.mark.unit


def _entry(name: str, received: str, completed: str, code: int, namespace: str = "ns") -> str:
    return json.dumps(
        {
            "stage": "ResponseComplete",
            "verb": "patch",
            "objectRef": {
                "resource": "memcacheds",
                "subresource": "status",
                "namespace": namespace,
                "name": name,
            },
            "requestReceivedTimestamp": f"2026-12-08T00:00:{received}Z",
            "stageTimestamp": f"2026-12-08T00:00:{completed}Z",
            "responseStatus": {"code": code},
        }
    )


def test_a_write_refused_with_a_conflict_is_not_an_overlapping_write(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(
        "\n".join(
            [
                # Two replicas wrote "a" at once: the API server took one and refused the other.
                _entry("a", "01.000000", "01.050000", 200),
                _entry("a", "01.010000", "01.040000", 409),
                # "b": two accepted writes at once, one folded from a state already replaced.
                _entry("b", "02.000000", "02.050000", 200),
                _entry("b", "02.010000", "02.060000", 200),
                _entry("c", "03.000000", "03.050000", 200, namespace="other"),
                '{"cut by a restart',
            ]
        )
    )
    accepted = status_write_spans(log, "ns")
    assert {name: len(w) for name, w in accepted.items()} == {"a": 1, "b": 2}
    refused = status_write_spans(log, "ns", refused=True)
    assert {name: len(w) for name, w in refused.items()} == {"a": 1}
    assert overlapping(accepted) == ["b"]
