"""Unit tests of the generated CRD: the committed copy is current and the schema is structural.

The API server rejects a non-structural schema when the CRD is applied; these tests catch
the same mistakes (leftover $ref/anyOf, missing types, status defaults) without a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel, Field, StringConstraints

from memcached_operator.shared.api import crd as crd_module
from memcached_operator.shared.api.crd import SchemaError, crd, crd_yaml
from memcached_operator.shared.api.quantity import QUANTITY_PATTERN

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
        f"{crd_module.CRD_PATH} is out of date with shared/api/models.py; regenerate it with "
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
        "endpoints",
        "endpointCount",
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
        "Endpoints": ("integer", ".status.endpointCount"),
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
    assert found == 9


def calls(rule: str, function: str) -> list[str]:
    """The argument text of every call of ``function`` in a CEL rule (balanced parentheses)."""
    found = []
    for match in re.finditer(rf"(?<![A-Za-z.]){function}\(", rule):
        depth, start = 1, match.end()
        for end in range(start, len(rule)):
            depth += {"(": 1, ")": -1}.get(rule[end], 0)
            if depth == 0:
                found.append(rule[start:end])
                break
    return found


@pytest.mark.unit
def test_every_quantity_a_rule_parses_is_matched_against_the_bounded_pattern_first() -> None:
    # The API server evaluates CEL rules even for values that failed the schema's pattern
    # (only maxLength/maxItems/maxProperties and type errors stop it), and quantity() of
    # "1e999999999" runs for minutes: each parsed value must pass the pattern in the rule.
    parsed = 0
    for path, node in nodes(schema()):
        for rule in (r["rule"] for r in node.get("x-kubernetes-validations", [])):
            for function in ("quantity", "isQuantity"):
                for argument in calls(rule, function):
                    if re.fullmatch(r"'[0-9]+'", argument):
                        continue  # a literal
                    parsed += 1
                    guard = f"!{argument}.matches(r'{QUANTITY_PATTERN}') || "
                    assert guard in rule, (path, rule)
                    assert rule.index(guard) < rule.index(f"{function}({argument})"), rule
    assert parsed == 14


def is_map(node: dict[str, Any]) -> bool:
    return isinstance(node.get("additionalProperties"), dict)


@pytest.mark.unit
def test_every_string_list_and_map_is_bounded() -> None:
    # Bounds the API server checks before CEL runs; they also keep CEL's cost estimates low.
    checked = 0
    for path, node in nodes(schema()):
        if path == ".metadata":
            continue  # the API server's own, bounded by it
        if node.get("type") == "string" or node.get("x-kubernetes-int-or-string"):
            checked += 1
            assert "maxLength" in node or "enum" in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["maximum"] == 2**63 - 1024, path
            assert node["pattern"] == f"{QUANTITY_PATTERN}", path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if is_map(node):
            assert "maxProperties" in node, path
            assert node.get("x-kubernetes-validations"), f"{path}: keys unchecked"
    assert checked == 14


@pytest.mark.unit
def test_bounds_of_the_spec() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert spec["image"]["maxLength"] == 512
    assert spec["image"]["pattern"].startswith("^") and spec["image"]["pattern"].endswith("$")
    for key in ("limits", "requests"):
        node = spec["resources"]["properties"][key]
        assert node["maxProperties"] == 16
        assert node["additionalProperties"]["maxLength"] == 34
    status = schema()["properties"]["status"]["properties"]
    assert status["nodes"]["maxItems"] == 2000
    assert status["nodes"]["items"]["maxLength"] == 253
    assert status["conditions"]["maxItems"] == 32
    assert status["lastTraceId"]["maxLength"] == 32


class _Keyed(BaseModel):
    things: dict[Annotated[str, StringConstraints(max_length=5, pattern="^[a-z]+$")], int] = Field(
        max_length=3
    )


@pytest.mark.unit
def test_a_map_key_constraint_without_a_cel_twin_is_refused() -> None:
    # A structural schema cannot constrain map keys: dropping pydantic's key pattern silently
    # would let the API server accept what the models refuse.
    raw = _Keyed.model_json_schema(by_alias=True)
    with pytest.raises(SchemaError, match="key constraints need a CEL rule"):
        crd_module._structural(raw, defs={}, in_status=False, path="")
    raw["properties"]["things"]["x-kubernetes-validations"] = [
        {"rule": "self.all(k, k.size() <= 5 && k.matches(r'^[a-z]+$'))", "message": "keys"}
    ]
    node = crd_module._structural(raw, defs={}, in_status=False, path="")["properties"]["things"]
    assert node["additionalProperties"] == {"type": "integer"}
    assert "patternProperties" not in node and "propertyNames" not in node
