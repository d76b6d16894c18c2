"""The Memcached custom resource as pydantic models: the one source of truth for its schema.

The CRD's openAPIV3Schema is generated from these models (see ``shared/crd.py``), and the
services parse API objects with them, so a spec the API server would reject also fails here
with a ``pydantic.ValidationError``. Rules a structural schema cannot express are written twice,
side by side: as a pydantic validator and as the CEL rule the API server evaluates.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from fractions import Fraction
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared.subjects import ObjectKey

GROUP = "cache.example.com"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Memcached"
PLURAL = "memcacheds"
SINGULAR = "memcached"
SHORT_NAMES = ("mc",)
DEFAULT_IMAGE = "memcached:1.6.38-alpine"

# The grammar of resource.Quantity's string form (k8s.io/apimachinery), without the sign:
# a negative request or limit is never valid for a container, so reject it at admission.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(
    r"^\+?(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"((?P<suffix>[KMGTPE]i|[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?$"
)
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIXES = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}

# Kubernetes stores a quantity as an integer or a string (x-kubernetes-int-or-string).
Quantity = Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]


def parse_quantity(value: int | str) -> Fraction:
    """The exact value of a Kubernetes quantity, so "64Mi" and "67108864" compare equal.

    Raises ValueError for text that is not a quantity.
    """
    if isinstance(value, int):
        return Fraction(value)
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    # Fraction parses decimal notation exactly, unlike float.
    number = Fraction(match.group("number"))
    if match.group("exponent") is not None:
        return number * Fraction(10) ** int(match.group("exponent"))
    suffix = match.group("suffix") or ""
    if suffix in _BINARY_SUFFIXES:
        return number * (1 << _BINARY_SUFFIXES[suffix])
    return number * Fraction(10) ** _DECIMAL_SUFFIXES[suffix]


def _limit_below_request_message(resource: str) -> str:
    return f"resources.limits.{resource} must not be less than resources.requests.{resource}"


def _limit_not_below_request_rule(resource: str) -> dict[str, str]:
    """The CEL twin of ResourceRequirements._limits_not_below_requests for one resource."""
    # Int-or-string values are `dyn` in CEL; string() accepts both forms, and isQuantity
    # keeps a malformed value from turning into an evaluation error instead of a message.
    limit = f"string(self.limits['{resource}'])"
    request = f"string(self.requests['{resource}'])"
    rule = (
        f"!has(self.limits) || !has(self.requests)"
        f" || !('{resource}' in self.limits) || !('{resource}' in self.requests)"
        f" || !isQuantity({limit}) || !isQuantity({request})"
        f" || quantity({limit}).compareTo(quantity({request})) >= 0"
    )
    return {
        "rule": rule,
        "message": _limit_below_request_message(resource),
    }


class _Model(BaseModel):
    """Base: camelCase names on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def to_api(self) -> dict[str, Any]:
        """The object as the Kubernetes API expects it: camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ResourceRequirements(
    _Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            _limit_not_below_request_rule("memory"),
            _limit_not_below_request_rule("cpu"),
        ]
    },
):
    """Compute resources of the memcached container, as in a Pod's container resources."""

    limits: dict[str, Quantity] | None = Field(
        default=None, description="Maximum amount of each resource the container may use."
    )
    requests: dict[str, Quantity] | None = Field(
        default=None,
        description="Amount of each resource the container needs; scheduling reserves it.",
    )

    @model_validator(mode="after")
    def _limits_not_below_requests(self) -> Self:
        for resource in ("memory", "cpu"):
            limit = (self.limits or {}).get(resource)
            request = (self.requests or {}).get(resource)
            if limit is None or request is None:
                continue
            if parse_quantity(limit) < parse_quantity(request):
                raise ValueError(_limit_below_request_message(resource))
        return self


class MemcachedSpec(_Model):
    """Desired state of a Memcached deployment."""

    size: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Number of memcached pods.",
        json_schema_extra={"format": "int32"},
    )
    image: str = Field(
        default=DEFAULT_IMAGE,
        min_length=1,
        description="Container image of memcached.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.trim().size() > 0", "message": "image must not be blank"}
            ]
        },
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of the memcached container."
    )

    @field_validator("image")
    @classmethod
    def _image_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("image must not be blank")
        return value


class Condition(_Model):
    """One aspect of the current state, in the shape of metav1.Condition."""

    type: str = Field(
        max_length=316,
        pattern=(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        ),
        description="Type of condition in CamelCase, e.g. Available.",
    )
    status: Literal["True", "False", "Unknown"] = Field(
        description="Status of the condition: True, False or Unknown."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The .metadata.generation the condition was set for.",
        json_schema_extra={"format": "int64"},
    )
    last_transition_time: datetime = Field(
        description="Last time the condition changed from one status to another."
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Programmatic identifier of the reason for the last transition, CamelCase.",
    )
    message: str = Field(
        max_length=32768,
        description="Human-readable details about the last transition.",
    )

    @field_serializer("last_transition_time", when_used="json")
    def _rfc3339_seconds(self, value: datetime) -> str:
        # metav1.Time has one-second resolution; naive datetimes are taken to be UTC.
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MemcachedStatus(_Model):
    """Observed state of a Memcached deployment, written by the status service."""

    nodes: list[str] = Field(
        default_factory=list, description="Names of the pods running memcached."
    )
    ready_replicas: int = Field(
        default=0,
        ge=0,
        description="Number of memcached pods that are ready.",
        json_schema_extra={"format": "int32"},
    )
    observed_generation: int = Field(
        default=0,
        ge=0,
        description="The .metadata.generation this status was computed for.",
        json_schema_extra={"format": "int64"},
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state of the deployment, one entry per condition type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    last_trace_id: str | None = Field(
        default=None, description="OpenTelemetry trace id of the last reconcile."
    )


class Memcached(_Model):
    """Memcached is a memcached deployment managed by memcached-operator."""

    api_version: Literal["cache.example.com/v1"] = "cache.example.com/v1"
    kind: Literal["Memcached"] = "Memcached"
    # Kept as the API sent it: the services read a few fields (name, namespace, uid,
    # generation) and must not drop the rest when they write the object back.
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: MemcachedSpec = Field(
        default_factory=MemcachedSpec,
        description="Desired state of the Memcached deployment.",
        # An absent spec is defaulted to {} by the API server, which then fills in the
        # nested defaults, the same as default_factory does here.
        json_schema_extra={"default": {}},
    )
    status: MemcachedStatus | None = Field(
        default=None, description="Observed state of the Memcached deployment."
    )

    @classmethod
    def from_api(cls, obj: dict[str, Any]) -> Memcached:
        """Parse an object as read from the API; raises ValidationError for an invalid spec."""
        return cls.model_validate(obj)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def uid(self) -> str | None:
        uid = self.metadata.get("uid")
        return None if uid is None else str(uid)

    def key(self) -> ObjectKey:
        """Namespace and name, the key of this CR's reconcile requests and subjects."""
        return ObjectKey(self.namespace, self.name)
