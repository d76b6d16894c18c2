"""The Memcached CustomResourceDefinition, generated from the pydantic models (api/models.py).

Pydantic's JSON schema is turned into a Kubernetes structural schema: references inlined,
int-or-string unions marked as such, optional (null) branches dropped, titles and status
defaults removed, and anything the API server would not accept rejected here instead.
The committed ``deploy/crd/memcacheds.cache.example.com.yaml`` is this module's output.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from memcached_operator.shared.api import models

CRD_NAME = f"{models.PLURAL}.{models.GROUP}"
CRD_PATH = f"deploy/crd/{CRD_NAME}.yaml"
REGENERATE = f"memcached-operator crd > {CRD_PATH}"

_HEADER = (
    f"# Generated from shared/api/models.py by shared/api/crd.py; do not edit.\n# {REGENERATE}\n"
)

# Keywords a structural schema may carry; anything else pydantic emits is a bug to fix here,
# better found when generating than when `kubectl apply` rejects the CRD.
_ALLOWED = frozenset(
    {
        "type",
        "format",
        "description",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "enum",
        "default",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "nullable",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-validations",
    }
)
# Pydantic annotations with no meaning for the API server.
_DROPPED = frozenset({"title", "examples"})

_PRINTER_COLUMNS = [
    {
        "name": "Size",
        "type": "integer",
        "jsonPath": ".spec.size",
        "description": "Desired number of memcached pods",
    },
    {
        "name": "Ready",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Number of ready memcached pods",
    },
    {
        "name": "Available",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Available")].status',
        "description": "Whether the Available condition is True",
    },
    {
        "name": "Endpoints",
        "type": "integer",
        "jsonPath": ".status.endpointCount",
        "description": "Number of ready memcached pods a client can connect to",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaError(ValueError):
    """Pydantic produced a schema construct that has no structural-schema equivalent."""


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A referenced or single-branch schema with the keywords written beside it applied."""
    merged = dict(base)
    for key, value in overlay.items():
        if key == "x-kubernetes-validations":
            # Rules of the type and rules of the field that uses it both hold.
            merged[key] = [*merged.get(key, []), *value]
        else:
            merged[key] = value
    return merged


def _map_keys(node: dict[str, Any], *, path: str) -> dict[str, Any]:
    """A map with constrained keys (pydantic's patternProperties and propertyNames) as a
    structural map: the value schema as additionalProperties.

    A structural schema cannot constrain keys, so the model must state them again as a CEL
    rule on the map; this refuses a key pattern or length that no rule of the node repeats,
    rather than dropping the constraint silently.
    """
    node = dict(node)
    patterns = node.pop("patternProperties")
    names = node.pop("propertyNames", {})
    if len(patterns) != 1 or "additionalProperties" in node:
        raise SchemaError(f"{path}: only one key pattern and no other properties are supported")
    ((pattern, value),) = patterns.items()
    rules = " ".join(rule["rule"] for rule in node.get("x-kubernetes-validations", []))
    needed = [f"matches(r'{pattern}')"]
    if "maxLength" in names:
        needed.append(f"size() <= {names['maxLength']}")
    missing = [text for text in needed if text not in rules]
    if missing or set(names) - {"maxLength"}:
        raise SchemaError(f"{path}: the map's key constraints need a CEL rule with {missing}")
    node["additionalProperties"] = value
    return node


def _int_or_string(branches: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold `anyOf: [integer, string]` into one node: value constraints of both branches
    apply only to values of their own type, so they can sit side by side."""
    node: dict[str, Any] = {"x-kubernetes-int-or-string": True}
    for branch in branches:
        node.update({key: value for key, value in branch.items() if key != "type"})
    return node


def _structural(
    node: dict[str, Any], *, defs: dict[str, Any], in_status: bool, path: str
) -> dict[str, Any]:
    """One pydantic JSON schema node as a structural schema node (recursively)."""
    node = {key: value for key, value in node.items() if key not in _DROPPED}
    if "$ref" in node:
        name = node.pop("$ref").removeprefix("#/$defs/")
        node = _merge(defs[name], node)
        return _structural(node, defs=defs, in_status=in_status, path=path)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator not in node:
            continue
        branches = [b for b in node.pop(combinator) if b.get("type") != "null"]
        # A null branch only says "optional": the API server prunes nulls of
        # non-nullable fields, and models dump with exclude_none.
        if len(branches) == 1:
            node = _merge(branches[0], node)
            return _structural(node, defs=defs, in_status=in_status, path=path)
        if combinator == "anyOf" and sorted(b.get("type", "") for b in branches) == [
            "integer",
            "string",
        ]:
            node = _merge(_int_or_string(branches), node)
            break
        raise SchemaError(f"{path}: {combinator} of {branches} has no structural equivalent")
    if "patternProperties" in node:
        node = _map_keys(node, path=path)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None:
        node.pop("default")
    if in_status:
        # Status is written only by the operator; defaults there would fill in fields of
        # status updates the operator did not send.
        node.pop("default", None)
    if "properties" in node:
        node["properties"] = {
            name: _structural(
                child,
                defs=defs,
                in_status=in_status or (path == "" and name == "status"),
                path=f"{path}.{name}",
            )
            for name, child in node["properties"].items()
        }
        # Structural schemas forbid additionalProperties beside properties, and pruning of
        # unknown fields already does what additionalProperties: false would.
        node.pop("additionalProperties", None)
    elif isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(
            node["additionalProperties"], defs=defs, in_status=in_status, path=f"{path}.*"
        )
    if isinstance(node.get("items"), dict):
        node["items"] = _structural(node["items"], defs=defs, in_status=in_status, path=f"{path}[]")
    unknown = set(node) - _ALLOWED
    if unknown:
        raise SchemaError(f"{path or '.'}: keywords {sorted(unknown)} are not allowed in a CRD")
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path or '.'}: every node of a structural schema needs a type")
    # Sorted keywords make the generated file diff cleanly whatever order pydantic uses;
    # the property names inside keep the order of the model's fields.
    return dict(sorted(node.items()))


def openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the Memcached CRD."""
    raw = models.Memcached.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(raw, defs=defs, in_status=False, path="")
    # The API server owns apiVersion, kind and metadata: metadata must be a bare object, and
    # the pydantic literals would only repeat what the API server already enforces.
    properties = schema["properties"]
    # Every string of the schema is bounded, these too (group/version and a DNS label).
    properties["apiVersion"] = {
        "type": "string",
        "maxLength": 317,
        "description": "APIVersion defines the versioned schema of this representation.",
    }
    properties["kind"] = {
        "type": "string",
        "maxLength": 63,
        "description": "Kind is a string value representing the REST resource of this object.",
    }
    properties["metadata"] = {"type": "object"}
    schema.pop("required", None)
    return schema


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of memcacheds.cache.example.com, as an API object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.size",
                            "statusReplicasPath": ".status.readyReplicas",
                        },
                    },
                    "additionalPrinterColumns": copy.deepcopy(_PRINTER_COLUMNS),
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as YAML, byte for byte the committed deploy/crd file."""
    # A wide line keeps each CEL rule on one line, where it can be read and grepped.
    body = yaml.safe_dump(crd(), sort_keys=False, width=1000, allow_unicode=True)
    return _HEADER + body


if __name__ == "__main__":
    print(crd_yaml(), end="")
