"""Unit tests of the generated CRD: the committed copy is current and the schema is structural.

The API server rejects a non-structural schema when the CRD is applied; these tests catch
the same mistakes (leftover $ref/anyOf, missing types, status defaults) without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import crd as crd_module
from shared.crd import crd, crd_yaml

ROOT = Path(__file__).resolve().parents[2]


def version() -> dict[str, Any]:
    versions = crd()["spec"]["versions"]
    assert len(versions) == 1
    result: dict[str, Any] = versions[0]
    return result


def schema() -> dict[str, Any]:
    result: dict[str, Any] = version()["schema"]["openAPIV3Schema"]
    return result


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")


@pytest.mark.unit
def test_committed_crd_is_current() -> None:
    committed = (ROOT / crd_module.CRD_PATH).read_text()
    assert committed == crd_yaml(), (
        f"{crd_module.CRD_PATH} is out of date with shared/models.py; regenerate it with "
        f"`{crd_module.REGENERATE}` (run from the repository root) and commit the result"
    )


@pytest.mark.unit
def test_yaml_is_the_crd() -> None:
    assert yaml.safe_load(crd_yaml()) == crd()


@pytest.mark.unit
def test_names_and_scope() -> None:
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == "memcacheds.cache.example.com"
    assert spec["group"] == "cache.example.com"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "Memcached",
        "listKind": "MemcachedList",
        "plural": "memcacheds",
        "singular": "memcached",
        "shortNames": ["mc"],
    }
    assert version()["name"] == "v1"
    assert version()["served"] is True
    assert version()["storage"] is True


@pytest.mark.unit
def test_no_pydantic_constructs_left() -> None:
    for path, node in nodes(schema()):
        for keyword in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const"):
            assert keyword not in node, f"{path or '.'} has {keyword}"
    assert "$ref" not in crd_yaml()


@pytest.mark.unit
def test_schema_is_structural() -> None:
    for path, node in nodes(schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string") is True, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("default", 0) is not None, path


@pytest.mark.unit
def test_metadata_is_a_bare_object() -> None:
    properties = schema()["properties"]
    assert properties["metadata"] == {"type": "object"}
    assert properties["apiVersion"]["type"] == "string"
    assert properties["kind"]["type"] == "string"


@pytest.mark.unit
def test_spec_fields_and_defaults() -> None:
    spec = schema()["properties"]["spec"]
    assert spec["type"] == "object"
    assert spec["default"] == {}
    size = spec["properties"]["size"]
    assert (size["type"], size["minimum"], size["maximum"], size["default"]) == (
        "integer",
        0,
        1000,
        1,
    )
    image = spec["properties"]["image"]
    assert image["type"] == "string"
    assert image["default"] == "memcached:1.6.38-alpine"


@pytest.mark.unit
def test_quantities_are_int_or_string() -> None:
    resources = schema()["properties"]["spec"]["properties"]["resources"]
    for key in ("limits", "requests"):
        value = resources["properties"][key]["additionalProperties"]
        assert value["x-kubernetes-int-or-string"] is True
        assert "type" not in value
        assert "pattern" in value


@pytest.mark.unit
def test_status_has_no_defaults_and_conditions_are_a_map() -> None:
    status = schema()["properties"]["status"]
    for path, node in nodes(status, ".status"):
        assert "default" not in node, path
    properties = status["properties"]
    assert set(properties) == {
        "nodes",
        "readyReplicas",
        "observedGeneration",
        "conditions",
        "lastTraceId",
    }
    conditions = properties["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert "pattern" in item["properties"]["reason"]


@pytest.mark.unit
def test_subresources() -> None:
    assert version()["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.size",
            "statusReplicasPath": ".status.readyReplicas",
        },
    }


@pytest.mark.unit
def test_printer_columns() -> None:
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version()["additionalPrinterColumns"]}
    assert columns == {
        "Size": ("integer", ".spec.size"),
        "Ready": ("integer", ".status.readyReplicas"),
        "Available": ("string", '.status.conditions[?(@.type=="Available")].status'),
        "Age": ("date", ".metadata.creationTimestamp"),
    }


@pytest.mark.unit
def test_cel_rules_with_messages() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    image_rules = spec["image"]["x-kubernetes-validations"]
    assert [r["message"] for r in image_rules] == ["image must not be blank"]
    assert "trim()" in image_rules[0]["rule"]

    resource_rules = spec["resources"]["x-kubernetes-validations"]
    messages = [r["message"] for r in resource_rules]
    assert messages == [
        "resources.limits.memory must not be less than resources.requests.memory",
        "resources.limits.cpu must not be less than resources.requests.cpu",
    ]
    for rule in resource_rules:
        text = rule["rule"]
        assert "quantity(" in text and ".compareTo(" in text, text
        assert "isQuantity(" in text and "has(self.limits)" in text, text


@pytest.mark.unit
def test_every_cel_rule_has_a_message() -> None:
    found = 0
    for path, node in nodes(schema()):
        for rule in node.get("x-kubernetes-validations", []):
            found += 1
            assert rule.get("message"), path
    assert found == 3
