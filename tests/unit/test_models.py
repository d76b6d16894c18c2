"""Unit tests of the Memcached models: what parses, what is refused, and how it serializes.

The reconciler turns a ValidationError into an InvalidSpec message, so every rule the API
server enforces on the spec must also fail here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from memcached_operator.shared.api.models import (
    CONDITIONS_MAX,
    DEFAULT_IMAGE,
    IMAGE_MAX_LENGTH,
    NODES_MAX,
    Condition,
    Memcached,
    MemcachedStatus,
)
from memcached_operator.shared.api.quantity import (
    QUANTITY_INT_MAX,
    QUANTITY_MAX,
    RESOURCES_MAX,
    parse_quantity,
)
from memcached_operator.shared.bus.subjects import ObjectKey

ROOT = Path(__file__).resolve().parents[2]


def api_object(spec: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {
            "name": "cache",
            "namespace": "team-a",
            "uid": "0b5f0c1e-2d43-4c39-9e31-4f7ad1b0c001",
            "generation": 2,
            "resourceVersion": "42",
            "managedFields": [{"manager": "kubectl"}],
            "someFutureField": {"x": 1},
        },
    }
    if spec is not None:
        obj["spec"] = spec
    obj.update(extra)
    return obj


@pytest.mark.unit
def test_parse_api_object_keeps_metadata_and_gives_key() -> None:
    cr = Memcached.from_api(api_object({"size": 3}))
    assert cr.spec.size == 3
    assert cr.spec.image == DEFAULT_IMAGE
    assert cr.spec.resources is None
    assert cr.key() == ObjectKey("team-a", "cache")
    assert cr.uid == "0b5f0c1e-2d43-4c39-9e31-4f7ad1b0c001"
    assert cr.metadata["someFutureField"] == {"x": 1}
    assert cr.status is None


@pytest.mark.unit
def test_missing_spec_gets_defaults() -> None:
    cr = Memcached.from_api(api_object())
    assert cr.spec.size == 1
    assert cr.spec.image == "memcached:1.6.38-alpine"


@pytest.mark.unit
def test_unknown_top_level_and_spec_fields_are_ignored() -> None:
    cr = Memcached.from_api(api_object({"size": 2, "replicas": 5}, someFutureField={"x": 1}))
    assert cr.spec.size == 2


@pytest.mark.unit
def test_resources_accept_strings_and_integers() -> None:
    spec = {
        "resources": {
            "requests": {"cpu": "100m", "memory": 67108864},
            "limits": {"cpu": 1, "memory": "64Mi"},
        }
    }
    cr = Memcached.from_api(api_object(spec))
    assert cr.spec.resources is not None
    assert cr.spec.resources.requests == {"cpu": "100m", "memory": 67108864}
    # Limits equal to requests are allowed.
    assert cr.spec.resources.to_api()["limits"] == {"cpu": 1, "memory": "64Mi"}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ({"size": -1}, "size", "greater than or equal to 0"),
        ({"size": 1001}, "size", "less than or equal to 1000"),
        ({"size": "many"}, "size", "integer"),
        ({"image": ""}, "image", "at least 1 character"),
        ({"image": "   "}, "image", "image must not be blank"),
        ({"resources": {"limits": {"memory": "lots"}}}, "resources", "pattern"),
        ({"resources": {"requests": {"cpu": -1}}}, "resources", "greater than or equal to 0"),
        (
            {"resources": {"requests": {"memory": "128Mi"}, "limits": {"memory": "64Mi"}}},
            "resources",
            "resources.limits.memory must not be less than resources.requests.memory",
        ),
        (
            {"resources": {"requests": {"cpu": 1}, "limits": {"cpu": "500m"}}},
            "resources",
            "resources.limits.cpu must not be less than resources.requests.cpu",
        ),
    ],
)
def test_invalid_spec_is_a_validation_error(spec: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Memcached.from_api(api_object(spec))
    errors = caught.value.errors()
    assert any(e["loc"][:2] == ("spec", field) for e in errors), errors
    assert text in str(caught.value)


@pytest.mark.unit
def test_wrong_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        Memcached.from_api(api_object(kind="Deployment"))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64Mi", 64 * 2**20),
        ("67108864", 64 * 2**20),
        (67108864, 64 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("500m", Fraction(1, 2)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("1e3", 1000),
        ("1E", 10**18),
        ("2k", 2000),
        ("100u", Fraction(1, 10000)),
        ("+3", 3),
    ],
)
def test_parse_quantity(text: int | str, value: Fraction | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.unit
@pytest.mark.parametrize(
    "text",
    [
        "",
        "lots",
        "1.2.3",
        "64MB",
        "1e3Mi",
        "Mi",
        "-",
        "-1",
        "1e1.5",
        # Beyond the bounds, refused before anything is computed: without them "1e999999999"
        # is 10^999999999, which no one waits for.
        "1e100",
        "1e99999",
        "1e999999999",
        "1" * 65,
        "1" * 100_000,
        "\uff11Gi",  # a fullwidth digit
    ],
)
def test_parse_quantity_rejects_non_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "exact"),
    [
        ("9223372036854775807", QUANTITY_MAX),
        ("1e99", 10**99),
        ("1e-99", Fraction(1, 10**99)),
        ("+1234567890123456789.123456789e-99", Fraction("1234567890123456789.123456789") / 10**99),
        ("7Ei", 7 * 2**60),
        # The API server's canonical form of an admitted "1234567890123456789.123456789".
        ("1234567890123456789123456789n", Fraction("1234567890123456789.123456789")),
        ("0.0000000001", Fraction(1, 10**10)),
        (QUANTITY_MAX, QUANTITY_MAX),
        (0, 0),
    ],
)
def test_parse_quantity_at_its_bounds(value: int | str, exact: Fraction | int) -> None:
    assert parse_quantity(value) == exact


@pytest.mark.unit
@pytest.mark.parametrize("value", [QUANTITY_MAX + 1, -1, 10**100])
def test_parse_quantity_rejects_integers_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(value)


def resources(**maps: dict[str, Any]) -> dict[str, Any]:
    return {"resources": maps}


# The specs tests/integration/test_bad_input.py shows the API server accepting at each bound.
ACCEPTED_AT_THE_BOUNDS = [
    {"image": "i" * IMAGE_MAX_LENGTH},
    {"image": "registry.example.com:5000/team/memcached:1.6.38-alpine@sha256:" + "a" * 64},
    {"image": "localhost/mem_cached__x.y-z/memcached"},
    resources(limits={"memory": "9223372036854775806"}),
    resources(limits={"memory": QUANTITY_INT_MAX}),
    resources(limits={"memory": "+1234567890123456789.123456789e-99"}),
    resources(limits={"memory": "7Ei", "cpu": "9E", "hugepages-2Mi": "1Gi"}),
    resources(requests={"example.com/gpu": 1, "ephemeral-storage": "1e9"}),
    resources(requests={f"example.com/r{i}": "1" for i in range(RESOURCES_MAX)}),
    resources(requests={"e" * 253 + "/" + "n" * 63: "1"}),
    {"memoryMB": 1, "maxItemSize": 512 * 1024},
    {"memoryMB": 1 << 20, "maxItemSize": 1 << 30},
    {"maxConnections": 16},
    {"maxConnections": 65536},
    {"memoryMB": 128, **resources(limits={"memory": "128Mi"})},
    {"memoryMB": 2, **resources(limits={"memory": 2 << 20})},
    {"monitoring": {"enabled": True, "image": "i" * IMAGE_MAX_LENGTH}},
]


@pytest.mark.unit
@pytest.mark.parametrize("spec", ACCEPTED_AT_THE_BOUNDS)
def test_specs_at_the_bounds_are_valid(spec: dict[str, Any]) -> None:
    Memcached.from_api(api_object(spec))


# Each case mirrors one in tests/integration/test_bad_input.py: the API server rejects the
# same spec, so the reconciler never has to.
REJECTED_PAST_THE_BOUNDS = [
    ({"image": "i" * (IMAGE_MAX_LENGTH + 1)}, ("image",), "at most 512 characters"),
    ({"image": "Memcached"}, ("image",), "pattern"),
    ({"image": "memcached:"}, ("image",), "pattern"),
    ({"image": "mem cached"}, ("image",), "pattern"),
    ({"image": "mémcached:1.6"}, ("image",), "pattern"),
    ({"image": "memcached:1.6\n"}, ("image",), "pattern"),
    (
        resources(limits={"memory": "1e999999999"}, requests={"memory": "1"}),
        ("resources", "limits", "memory"),
        "pattern",
    ),
    (resources(limits={"memory": "1" * 20}), ("resources", "limits", "memory"), "pattern"),
    (resources(limits={"memory": "1e100"}), ("resources", "limits", "memory"), "pattern"),
    (resources(limits={"memory": "1e1.5"}), ("resources", "limits", "memory"), "pattern"),
    (resources(limits={"memory": "\uff11Gi"}), ("resources", "limits", "memory"), "pattern"),
    (resources(limits={"memory": " 12 "}), ("resources", "limits", "memory"), "pattern"),
    (resources(limits={"memory": True}), ("resources", "limits", "memory"), "valid integer"),
    (
        resources(limits={"memory": "1" * 35}),
        ("resources", "limits", "memory"),
        "at most 34 characters",
    ),
    (
        resources(limits={"memory": QUANTITY_INT_MAX + 1}),
        ("resources", "limits", "memory"),
        "less than or equal to 9223372036854774784",
    ),
    (
        resources(limits={"memory": "9223372036854775807"}),
        ("resources", "limits", "memory"),
        "must be less than 9223372036854775807 (2^63-1)",
    ),
    (
        resources(limits={"memory": "1e99"}),
        ("resources", "limits", "memory"),
        "must be less than 9223372036854775807 (2^63-1)",
    ),
    (
        resources(limits={"memory": "8Ei"}),
        ("resources", "limits", "memory"),
        "must be less than 9223372036854775807 (2^63-1)",
    ),
    (resources(limits={"memroy": "1Gi"}), ("resources", "limits", "memroy", "[key]"), "pattern"),
    (resources(limits={"mémoire": "1Gi"}), ("resources", "limits", "mémoire", "[key]"), "pattern"),
    (
        resources(limits={"e" * 254 + "/" + "n" * 63: "1"}),
        ("resources", "limits"),
        "at most 317 characters",
    ),
    (
        resources(requests={f"example.com/r{i}": "1" for i in range(RESOURCES_MAX + 1)}),
        ("resources", "requests"),
        "at most 16 items",
    ),
    ({"memoryMB": 0}, ("memoryMB",), "greater than or equal to 1"),
    (
        {"monitoring": {"image": "i" * (IMAGE_MAX_LENGTH + 1)}},
        ("monitoring", "image"),
        "at most 512 characters",
    ),
    ({"monitoring": {"image": "Exporter"}}, ("monitoring", "image"), "pattern"),
    ({"memoryMB": (1 << 20) + 1}, ("memoryMB",), "less than or equal to 1048576"),
    ({"maxConnections": 15}, ("maxConnections",), "greater than or equal to 16"),
    ({"maxConnections": 65537}, ("maxConnections",), "less than or equal to 65536"),
    ({"maxItemSize": 0}, ("maxItemSize",), "greater than or equal to 524288"),
    ({"maxItemSize": (1 << 30) + 524288}, ("maxItemSize",), "less than or equal to 1073741824"),
    ({"maxItemSize": 1 << 20 | 1024}, ("maxItemSize",), "multiple of 524288"),
    (
        {"memoryMB": 1, "maxItemSize": 1 << 20},
        (),
        "maxItemSize must be at most half of memoryMB",
    ),
    (
        {"memoryMB": 129, **resources(limits={"memory": "128Mi"})},
        (),
        "memoryMB must not exceed resources.limits.memory",
    ),
]


@pytest.mark.unit
@pytest.mark.parametrize(("spec", "loc", "text"), REJECTED_PAST_THE_BOUNDS)
def test_specs_past_the_bounds_are_refused(
    spec: dict[str, Any], loc: tuple[str, ...], text: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Memcached.from_api(api_object(spec))
    errors = caught.value.errors()
    assert any(e["loc"][1 : 1 + len(loc)] == loc for e in errors), errors
    assert text in str(caught.value)


def condition(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "type": "Available",
        "status": "True",
        "observedGeneration": 2,
        "lastTransitionTime": "2025-03-01T10:20:30Z",
        "reason": "MinimumReplicasAvailable",
        "message": "3 of 3 pods are ready",
    }
    value.update(overrides)
    return value


@pytest.mark.unit
def test_status_round_trips_in_api_shape() -> None:
    status = {
        "nodes": ["cache-7d9f-abcde", "cache-7d9f-fghij"],
        "endpoints": ["10.0.0.7:11211", "[fd00::7]:11211"],
        "endpointCount": 2,
        "readyReplicas": 2,
        "observedGeneration": 2,
        "conditions": [condition()],
        "lastTraceId": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    cr = Memcached.from_api(api_object({"size": 2}, status=status))
    assert cr.status is not None
    assert cr.status.ready_replicas == 2
    assert cr.status.conditions[0].last_transition_time == datetime(
        2025, 3, 1, 10, 20, 30, tzinfo=UTC
    )
    assert cr.status.to_api() == status


@pytest.mark.unit
def test_status_omits_unset_trace_id() -> None:
    assert MemcachedStatus().to_api() == {
        "nodes": [],
        "endpoints": [],
        "endpointCount": 0,
        "readyReplicas": 0,
        "observedGeneration": 0,
        "conditions": [],
    }


@pytest.mark.unit
def test_condition_time_is_rfc3339_utc_seconds() -> None:
    local = timezone(timedelta(hours=2))
    made = Condition(
        type="Available",
        status="False",
        last_transition_time=datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=local),
        reason="NoPodsReady",
        message="",
    )
    dumped = made.to_api()
    assert dumped["lastTransitionTime"] == "2025-03-01T10:00:00Z"
    assert "observedGeneration" not in dumped


@pytest.mark.unit
@pytest.mark.parametrize(
    ("status", "accepted"),
    [
        ({"nodes": ["p" * 253]}, True),
        ({"nodes": ["p" * 254]}, False),
        ({"nodes": ["Pod_1"]}, False),
        ({"nodes": [f"p-{i}" for i in range(NODES_MAX)]}, True),
        ({"nodes": [f"p-{i}" for i in range(NODES_MAX + 1)]}, False),
        ({"conditions": [condition(type=f"T{i}") for i in range(CONDITIONS_MAX)]}, True),
        ({"conditions": [condition(type=f"T{i}") for i in range(CONDITIONS_MAX + 1)]}, False),
        ({"lastTraceId": "4bf92f3577b34da6a3ce929d0e0e4736"}, True),
        ({"lastTraceId": "4bf92f3577b34da6a3ce929d0e0e47360"}, False),
        ({"lastTraceId": "4BF92F3577B34DA6A3CE929D0E0E4736"}, False),
        ({"conditions": [condition(message="m" * 32768)]}, True),
        ({"conditions": [condition(message="m" * 32769)]}, False),
        ({"conditions": [condition(reason="R" * 1024)]}, True),
        ({"conditions": [condition(reason="R" * 1025)]}, False),
        ({"conditions": [condition(type="example.com/" + "T" * 304)]}, True),
        ({"conditions": [condition(type="example.com/" + "T" * 305)]}, False),
        ({"conditions": [condition(lastTransitionTime="2025-03-01T10:20:30" + "0" * 45)]}, False),
    ],
)
def test_status_bounds(status: dict[str, Any], accepted: bool) -> None:
    if accepted:
        MemcachedStatus.model_validate(status)
    else:
        with pytest.raises(ValidationError):
            MemcachedStatus.model_validate(status)


@pytest.mark.unit
@pytest.mark.parametrize(
    "overrides",
    [
        {"status": "Yes"},
        {"reason": "not camel case"},
        {"reason": ""},
        {"type": "has space"},
        {"lastTransitionTime": "yesterday"},
        {"observedGeneration": -1},
    ],
)
def test_invalid_condition_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Condition.model_validate(condition(**overrides))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("path", "size"),
    [("memcached-sample.yaml", 3), ("memcached-with-resources.yaml", 2)],
)
def test_samples_are_valid(path: str, size: int) -> None:
    obj = yaml.safe_load((ROOT / "deploy" / "samples" / path).read_text())
    cr = Memcached.from_api(obj)
    assert cr.spec.size == size
    assert cr.name == path.removesuffix(".yaml")


@pytest.mark.unit
def test_sample_with_resources_has_requests_and_limits() -> None:
    obj = yaml.safe_load((ROOT / "deploy/samples/memcached-with-resources.yaml").read_text())
    spec = Memcached.from_api(obj).spec
    resources = spec.resources
    assert resources is not None
    assert resources.requests and resources.limits
    assert spec.max_connections == 2048
    assert spec.max_item_size == 2 << 20


@pytest.mark.unit
def test_kustomization_lists_every_sample() -> None:
    samples = ROOT / "deploy" / "samples"
    kustomization = yaml.safe_load((samples / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in samples.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
