"""The Memcached custom resource as pydantic models: the one source of truth for its schema.

The CRD's openAPIV3Schema is generated from these models (see ``shared/api/crd.py``), and the
services parse API objects with them, so a spec the API server would reject also fails here
with a ``pydantic.ValidationError``. Rules a structural schema cannot express are written twice,
side by side: as a pydantic validator and as the CEL rule the API server evaluates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from memcached_operator.shared.api.quantity import (
    DNS_SUBDOMAIN,
    QUANTITY_PATTERN,
    RESOURCES_MAX,
    Quantity,
    ResourceName,
    cel_string,
    limit_below_request_message,
    limit_not_below_request_rule,
    resource_names_rule,
)

# Re-exported: the services compare quantities with the models they parse.
from memcached_operator.shared.api.quantity import parse_quantity as parse_quantity
from memcached_operator.shared.bus.subjects import ObjectKey

GROUP = "cache.example.com"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Memcached"
PLURAL = "memcacheds"
SINGULAR = "memcached"
SHORT_NAMES = ("mc",)
DEFAULT_IMAGE = "memcached:1.6.38-alpine"
DEFAULT_EXPORTER_IMAGE = "quay.io/prometheus/memcached-exporter:v0.15.0"

# Bounds on input, checked by the API server before any CEL rule runs, so that no object can
# make validation (kube-apiserver's, or the services' parse_quantity) expensive. Only some schema
# errors (maxLength, maxItems, maxProperties, a wrong type, a missing field, a value not in an
# enum) stop the API server from evaluating the CEL rules; a pattern mismatch does not. So every
# string has a maxLength, and every rule that parses a quantity matches it against
# QUANTITY_PATTERN first. The quantities' and resource names' bounds are in shared/api/quantity.py.

# An image reference as github.com/distribution/reference parses it:
# [registry[:port]/]path[:tag][@digest].
_REGISTRY_COMPONENT = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?"
_REGISTRY = rf"{_REGISTRY_COMPONENT}(\.{_REGISTRY_COMPONENT})*(:[0-9]{{1,5}})?"
_PATH_COMPONENT = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_PATTERN = rf"^({_REGISTRY}/)?{_PATH_COMPONENT}(/{_PATH_COMPONENT})*(:{_TAG})?(@{_DIGEST})?$"
# A repository name of up to 255 characters (distribution's limit), a 128-character tag and a
# sha256 digest fit.
IMAGE_MAX_LENGTH = 512
Image = Annotated[
    str, StringConstraints(min_length=1, max_length=IMAGE_MAX_LENGTH, pattern=IMAGE_PATTERN)
]

# memcached's own settings. -m is in MiB ("megabytes" in memcached's help, 1024 * 1024 bytes);
# a TiB of cache per pod is far beyond any node, and bounds the derived value too.
MEBIBYTE = 1 << 20
MEMORY_MB_MAX = 1 << 20
# memcached sets RLIMIT_NOFILE to -c; as a non-root user it cannot raise it above the hard
# limit of the container runtime (1048576 or 524288 usually), and 64 Ki connections per pod is
# already far more than one memcached serves well.
MAX_CONNECTIONS_MIN = 16
MAX_CONNECTIONS_MAX = 65536
DEFAULT_MAX_CONNECTIONS = 1024
# memcached 1.6 refuses an -I that is not a multiple of its slab chunk size (512 KiB by
# default), below it, or above 1 GiB; and one above half of -m.
ITEM_SIZE_STEP = 512 * 1024
ITEM_SIZE_MAX = 1 << 30
DEFAULT_MAX_ITEM_SIZE = 1 << 20

# Pod names in status.nodes: the ready pods of at most 1000 replicas, with room for the pods a
# rolling update surges (25 % by default) on top.
NODES_MAX = 2000
POD_NAME_MAX_LENGTH = 253
# host:port of a ready pod in status.endpoints: an IPv6 address (45 characters at most) in
# brackets and a port.
ENDPOINT_MAX_LENGTH = 53
ENDPOINT_PATTERN = r"^([0-9.]{7,15}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}$"
# Ours are Available, Progressing and Degraded; the rest is room for other writers'.
CONDITIONS_MAX = 32
# W3C trace ids: 16 bytes in lowercase hex.
TRACE_ID_PATTERN = r"^[0-9a-f]{32}$"
# RFC 3339 date-times are at most 35 characters ("2006-01-02T15:04:05.999999999+07:00").
DATE_TIME_MAX_LENGTH = 64


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
            limit_not_below_request_rule("memory"),
            limit_not_below_request_rule("cpu"),
        ]
    },
):
    """Compute resources of the memcached container, as in a Pod's container resources."""

    limits: dict[ResourceName, Quantity] | None = Field(
        default=None,
        max_length=RESOURCES_MAX,
        description="Maximum amount of each resource the container may use.",
        json_schema_extra={"x-kubernetes-validations": [resource_names_rule()]},
    )
    requests: dict[ResourceName, Quantity] | None = Field(
        default=None,
        max_length=RESOURCES_MAX,
        description="Amount of each resource the container needs; scheduling reserves it.",
        json_schema_extra={"x-kubernetes-validations": [resource_names_rule()]},
    )

    @model_validator(mode="after")
    def _limits_not_below_requests(self) -> Self:
        for resource in ("memory", "cpu"):
            limit = (self.limits or {}).get(resource)
            request = (self.requests or {}).get(resource)
            if limit is None or request is None:
                continue
            if parse_quantity(limit) < parse_quantity(request):
                raise ValueError(limit_below_request_message(resource))
        return self


def _item_size_message() -> str:
    return "maxItemSize must be at most half of memoryMB (memcached refuses to start otherwise)"


def _item_fits_memory_rule() -> dict[str, str]:
    """The CEL twin of MemcachedSpec._item_fits_memory."""
    return {
        "rule": (
            "!has(self.memoryMB) || !has(self.maxItemSize)"
            f" || self.maxItemSize * 2 <= self.memoryMB * {MEBIBYTE}"
        ),
        "message": _item_size_message(),
    }


def _memory_above_limit_message() -> str:
    return "memoryMB must not exceed resources.limits.memory"


def _memory_within_limit_rule() -> dict[str, str]:
    """The CEL twin of MemcachedSpec._memory_within_limit."""
    limit = "string(self.resources.limits['memory'])"
    pattern = cel_string(QUANTITY_PATTERN)
    return {
        # As in _limit_not_below_request_rule: the pattern before quantity().
        "rule": (
            "!has(self.memoryMB) || !has(self.resources) || !has(self.resources.limits)"
            " || !('memory' in self.resources.limits)"
            f" || !{limit}.matches({pattern}) || !isQuantity({limit})"
            # Past its maximum memoryMB is reported by the schema; here it would overflow.
            f" || self.memoryMB > {MEMORY_MB_MAX}"
            f" || !quantity({limit}).sub(self.memoryMB * {MEBIBYTE}).isLessThan(quantity('0'))"
        ),
        "message": _memory_above_limit_message(),
    }


class Monitoring(_Model):
    """A Prometheus exporter beside each memcached."""

    enabled: bool = Field(
        default=False,
        description="Run memcached-exporter (port 9150) in each pod, with scrape annotations.",
    )
    image: Image = Field(
        default=DEFAULT_EXPORTER_IMAGE,
        description="Container image of memcached-exporter: [registry[:port]/]path[:tag][@digest].",
    )


class MemcachedSpec(
    _Model,
    json_schema_extra={
        "x-kubernetes-validations": [_item_fits_memory_rule(), _memory_within_limit_rule()]
    },
):
    """Desired state of a Memcached deployment."""

    size: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Number of memcached pods.",
        json_schema_extra={"format": "int32"},
    )
    image: Image = Field(
        default=DEFAULT_IMAGE,
        description="Container image of memcached: [registry[:port]/]path[:tag][@digest].",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.trim().size() > 0", "message": "image must not be blank"}
            ]
        },
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of the memcached container."
    )
    memory_mb: int | None = Field(
        default=None,
        alias="memoryMB",
        ge=1,
        le=MEMORY_MB_MAX,
        description=(
            "Cache memory of each pod in MiB (memcached -m), at most the memory limit. Unset: "
            "the memory limit less an overhead of 10 % (at least 16 MiB) for connections, the "
            "hash table and the process itself; 64 without a memory limit."
        ),
        json_schema_extra={"format": "int32"},
    )
    monitoring: Monitoring | None = Field(
        default=None, description="Prometheus metrics of each memcached."
    )
    max_connections: int = Field(
        default=DEFAULT_MAX_CONNECTIONS,
        ge=MAX_CONNECTIONS_MIN,
        le=MAX_CONNECTIONS_MAX,
        description="Simultaneous client connections each pod accepts (memcached -c).",
        json_schema_extra={"format": "int32"},
    )
    max_item_size: int = Field(
        default=DEFAULT_MAX_ITEM_SIZE,
        ge=ITEM_SIZE_STEP,
        le=ITEM_SIZE_MAX,
        multiple_of=ITEM_SIZE_STEP,
        description=(
            "Largest item in bytes (memcached -I): a multiple of 512 KiB up to 1 GiB, and at "
            "most half of the cache memory."
        ),
        json_schema_extra={"format": "int32"},
    )

    # Before the pattern, which rejects blanks too, so that both sides give the same message.
    @field_validator("image", mode="before")
    @classmethod
    def _image_not_blank(cls, value: Any) -> Any:
        if isinstance(value, str) and value and not value.strip():
            raise ValueError("image must not be blank")
        return value

    @model_validator(mode="after")
    def _item_fits_memory(self) -> Self:
        if self.memory_mb is not None and self.max_item_size * 2 > self.memory_mb * MEBIBYTE:
            raise ValueError(_item_size_message())
        return self

    @model_validator(mode="after")
    def _memory_within_limit(self) -> Self:
        limit = (self.resources.limits or {}).get("memory") if self.resources else None
        if (
            self.memory_mb is not None
            and limit is not None
            and parse_quantity(limit) < self.memory_mb * MEBIBYTE
        ):
            raise ValueError(_memory_above_limit_message())
        return self


PodName = Annotated[
    str, StringConstraints(max_length=POD_NAME_MAX_LENGTH, pattern=rf"^{DNS_SUBDOMAIN}$")
]
Endpoint = Annotated[
    str, StringConstraints(max_length=ENDPOINT_MAX_LENGTH, pattern=ENDPOINT_PATTERN)
]


def _date_time_not_too_long(value: Any) -> Any:
    """The twin of the schema's maxLength on a date-time, before pydantic parses it."""
    if isinstance(value, str) and len(value) > DATE_TIME_MAX_LENGTH:
        raise ValueError(f"a date-time has at most {DATE_TIME_MAX_LENGTH} characters")
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
    last_transition_time: Annotated[datetime, BeforeValidator(_date_time_not_too_long)] = Field(
        description="Last time the condition changed from one status to another.",
        json_schema_extra={"maxLength": DATE_TIME_MAX_LENGTH},
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

    nodes: list[PodName] = Field(
        default_factory=list,
        max_length=NODES_MAX,
        description="Names of the pods running memcached.",
    )
    endpoints: list[Endpoint] = Field(
        default_factory=list,
        max_length=NODES_MAX,
        description=(
            "host:port of each ready memcached pod (its pod IP and port 11211), the server "
            "list of a client that shards keys over the pool; the headless Service of the "
            "same name resolves to the same addresses."
        ),
    )
    endpoint_count: int = Field(
        default=0,
        ge=0,
        description="Number of endpoints.",
        json_schema_extra={"format": "int32"},
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
        max_length=CONDITIONS_MAX,
        description="Current state of the deployment, one entry per condition type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    last_trace_id: (
        Annotated[str, StringConstraints(max_length=32, pattern=TRACE_ID_PATTERN)] | None
    ) = Field(default=None, description="OpenTelemetry trace id of the last reconcile.")


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
