"""status.endpoints: pod IPs become host:port only when they are addresses (no I/O)."""

from __future__ import annotations

import runpy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from nats.js import JetStreamContext

from memcached_operator.shared.api.pods import endpoint, pod_ip, valid_ip
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.status.conditions import fold_status
from memcached_operator.status.endpoints import ready_endpoints
from memcached_operator.status.pod_index import PodIndex

pytestmark = pytest.mark.unit

OWNER = ObjectKey("ns", "cache")
SNIPPET = "deploy/samples/memcached_client.py"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10.244.0.7", "10.244.0.7"),
        ("fd00:0:0::7", "fd00::7"),
        ("", ""),
        ("10.244.0.7:11211", ""),
        ("cache.example.com", ""),
        ("10.244.0.7\r\nX: y", ""),
        ("1" * 46, ""),
        (7, ""),
    ],
)
def test_only_addresses_are_taken(text: object, canonical: str) -> None:
    assert valid_ip(text) == canonical


def test_endpoints_bracket_ipv6() -> None:
    assert endpoint("10.0.0.1") == "10.0.0.1:11211"
    assert endpoint("fd00::7") == "[fd00::7]:11211"


def test_the_index_lists_ready_pods_with_an_address_and_drops_forged_ones() -> None:
    index = PodIndex(cast(JetStreamContext, None))
    index.fold_fields(ObjectKey("ns", "a"), "added", "cache", True, ip="10.0.0.2")
    index.fold_fields(ObjectKey("ns", "b"), "added", "cache", True, ip="10.0.0.1")
    index.fold_fields(ObjectKey("ns", "c"), "added", "cache", False, ip="10.0.0.3")
    # A header that is not an address (a hostile or broken publisher): no endpoint.
    index.fold_fields(ObjectKey("ns", "d"), "added", "cache", True, ip="evil.example.com:1")
    index.fold_fields(ObjectKey("ns", "e"), "added", "cache", True)
    assert index.ready_endpoints(OWNER) == ["10.0.0.1:11211", "10.0.0.2:11211"]
    assert index.ready_pods(OWNER) == ["a", "b", "d", "e"]
    index.fold_fields(ObjectKey("ns", "a"), "deleted", "cache", True, ip="10.0.0.2")
    assert index.ready_endpoints(OWNER) == ["10.0.0.1:11211"]


def pod(name: str, ip: str | None, *, ready: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]
    }
    if ip is not None:
        status["podIP"] = ip
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "annotations": {"cache.example.com/memcached": "cache"},
        },
        "status": status,
    }


def test_listed_pods_give_the_same_endpoints() -> None:
    cr = {"metadata": {"name": "cache", "namespace": "ns"}}
    pods = [pod("a", "10.0.0.2"), pod("b", None), pod("c", "10.0.0.3", ready=False)]
    assert pod_ip(pods[0]) == "10.0.0.2"
    assert ready_endpoints(cr, pods) == ["10.0.0.2:11211"]


def test_the_status_carries_endpoints_and_their_count() -> None:
    cr = {"metadata": {"name": "cache", "namespace": "ns", "uid": "u", "generation": 1}}
    status = fold_status(
        cr=cr,
        deployment=None,
        nodes=["a"],
        outcome=None,
        now=datetime(2025, 3, 1, tzinfo=UTC),
        endpoints=["10.0.0.2:11211"],
    )
    assert status["endpoints"] == ["10.0.0.2:11211"]
    assert status["endpointCount"] == 1


def test_the_client_snippet_reads_ipv4_and_ipv6_endpoints() -> None:
    snippet = runpy.run_path(str(Path(__file__).resolve().parents[2] / SNIPPET))
    mc = {"status": {"endpoints": ["10.0.0.2:11211", "[fd00::7]:11211"]}}
    assert snippet["servers_from_status"](mc) == [("10.0.0.2", 11211), ("fd00::7", 11211)]
    assert snippet["servers_from_status"]({}) == []
