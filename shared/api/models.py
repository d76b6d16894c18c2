"""The Memcached custom resource as pydantic models: the one source of truth for its schema.

The CRD's openAPIV3Schema is generated from these models (see ``shared/api/crd.py``), and the
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
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    StringConstraints,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

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
# QUANTITY_PATTERN first.

# The grammar of resource.Quantity's string form (k8s.io/apimachinery), without the sign (a
# negative request or limit is never valid for a container), bounded to what a Quantity can
# hold: at most 2^63-1 (19 integer digits) with nano precision (9 decimals); exponents of at most
# two digits. Unbounded, "1e999999999" makes resource.ParseQuantity compute 10^999999999: CEL's
# quantity() pins a kube-apiserver core for minutes while its cost budget counts 2 units.
QUANTITY_PATTERN = (
    r"^\+?([0-9]{1,19}(\.[0-9]{0,9})?|\.[0-9]{1,9})"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]{1,2}))?$"
)
# "+", 19 digits, ".", 9 decimals and "e+99".
QUANTITY_MAX_LENGTH = 34
# The largest value a resource.Quantity represents (int64). resource.ParseQuantity caps larger
# binary-suffixed values at it ("8Ei" compares equal to it), so quantities must be less.
QUANTITY_MAX = 2**63 - 1
# The bound on an integer quantity: the API server holds a schema's maximum as a float64 and
# converts it back to int64 for integers, and 2^63-1 rounds to 2^63, which overflows to -2^63
# and would reject every integer; 2^63-1024 is the largest float64 below 2^63.
QUANTITY_INT_MAX = 2**63 - 1024
# What parse_quantity reads: the API server's canonical forms of admitted values too, which may
# hold more digits ("1234567890123456789.123456789" is "1234567890123456789123456789n"). The
# cost is bounded by the length and the two-digit exponent, not by the digits.
_PARSE_MAX_LENGTH = 64
_QUANTITY = re.compile(
    r"\+?(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"((?P<suffix>[KMGTPE]i|[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]{1,2}))?"
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

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
# A container resource name as a Pod accepts it: a standard one, a huge page size, or an
# extended resource <domain>/<name> (253 + 1 + 63 characters at most).
RESOURCE_NAME_PATTERN = (
    rf"^(cpu|memory|ephemeral-storage|hugepages-[0-9]+([KMGTPE]i|[kMGTPE])?"
    rf"|{_DNS_SUBDOMAIN}/{_QUALIFIED_NAME})$"
)
RESOURCE_NAME_MAX_LENGTH = 317
# Resources of one container: cpu, memory, ephemeral-storage, a few huge page sizes and
# extended resources; more is a mistake, and a bound keeps the map's CEL rules cheap.
RESOURCES_MAX = 16
RESOURCE_NAMES_MESSAGE = (
    "keys must be resource names (cpu, memory, ephemeral-storage, hugepages-<size> or"
    f" <domain>/<name>) of at most {RESOURCE_NAME_MAX_LENGTH} characters"
)

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


def _cel_string(text: str) -> str:
    """``text`` as a CEL raw string literal (patterns hold backslashes CEL would unescape)."""
    if "'" in text:
        raise ValueError(f"cannot quote {text!r} as a CEL raw string")
    return f"r'{text}'"


def _quantity_too_large_message() -> str:
    return f"must be less than {QUANTITY_MAX} (2^63-1), where Kubernetes caps quantities"


def _quantity_below_max_rule() -> dict[str, JsonValue]:
    """The CEL twin of _representable, on one limits or requests value."""
    value = "string(self)"
    return {
        # The pattern comes first: the API server evaluates this rule even when the value
        # failed the schema's pattern, and quantity() of "1e999999999" runs for minutes.
        "rule": (
            f"!{value}.matches({_cel_string(QUANTITY_PATTERN)}) || !isQuantity({value})"
            f" || quantity({value}).compareTo(quantity('{QUANTITY_MAX}')) < 0"
        ),
        "message": _quantity_too_large_message(),
    }


def _representable(value: int | str) -> int | str:
    if parse_quantity(value) >= QUANTITY_MAX:
        raise ValueError(_quantity_too_large_message())
    return value


# Kubernetes stores a quantity as an integer or a string (x-kubernetes-int-or-string).
Quantity = Annotated[
    # Strict: the API server never reads a quantity's string as an integer (" 12 ", "1_0").
    Annotated[int, Strict(), Field(ge=0, le=QUANTITY_INT_MAX)]
    | Annotated[str, StringConstraints(max_length=QUANTITY_MAX_LENGTH, pattern=QUANTITY_PATTERN)],
    AfterValidator(_representable),
    Field(json_schema_extra={"x-kubernetes-validations": [_quantity_below_max_rule()]}),
]
ResourceName = Annotated[
    str, StringConstraints(max_length=RESOURCE_NAME_MAX_LENGTH, pattern=RESOURCE_NAME_PATTERN)
]


def _resource_names_rule() -> dict[str, JsonValue]:
    """The CEL twin of ResourceName, on a limits or requests map: a structural schema cannot
    constrain the keys of a map."""
    return {
        "rule": (
            f"self.all(k, k.size() <= {RESOURCE_NAME_MAX_LENGTH}"
            f" && k.matches({_cel_string(RESOURCE_NAME_PATTERN)}))"
        ),
        "message": RESOURCE_NAMES_MESSAGE,
    }


def parse_quantity(value: int | str) -> Fraction:
    """The exact value of a Kubernetes quantity, so "64Mi" and "67108864" compare equal.

    Raises ValueError for text that is not a quantity, is longer than 64 characters or has an
    exponent of more than two digits, before computing anything: the cost is bounded whatever
    the input ("1e999999999" would otherwise be 10^999999999).
    """
    if isinstance(value, int):
        if not 0 <= value <= QUANTITY_MAX:
            raise ValueError(f"not a Kubernetes quantity between 0 and {QUANTITY_MAX}: {value}")
        return Fraction(value)
    # Length first: even a linear-time match should not scan megabytes.
    match = _QUANTITY.fullmatch(value.strip()) if len(value) <= _PARSE_MAX_LENGTH else None
    if match is None:
        raise ValueError(
            f"not a Kubernetes quantity of at most {_PARSE_MAX_LENGTH} characters with an"
            f" exponent of at most two digits: {value[:_PARSE_MAX_LENGTH]!r}"
        )
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
    # Int-or-string values are `dyn` in CEL; string() accepts both forms. The pattern keeps
    # quantity() from values the schema rejected (the API server still runs this rule for
    # them), and isQuantity a malformed value from turning into an evaluation error.
    limit = f"string(self.limits['{resource}'])"
    request = f"string(self.requests['{resource}'])"
    pattern = _cel_string(QUANTITY_PATTERN)
    rule = (
        f"!has(self.limits) || !has(self.requests)"
        f" || !('{resource}' in self.limits) || !('{resource}' in self.requests)"
        f" || !{limit}.matches({pattern}) || !{request}.matches({pattern})"
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

    limits: dict[ResourceName, Quantity] | None = Field(
        default=None,
        max_length=RESOURCES_MAX,
        description="Maximum amount of each resource the container may use.",
        json_schema_extra={"x-kubernetes-validations": [_resource_names_rule()]},
    )
    requests: dict[ResourceName, Quantity] | None = Field(
        default=None,
        max_length=RESOURCES_MAX,
        description="Amount of each resource the container needs; scheduling reserves it.",
        json_schema_extra={"x-kubernetes-validations": [_resource_names_rule()]},
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
    pattern = _cel_string(QUANTITY_PATTERN)
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
    image: str = Field(
        default=DEFAULT_EXPORTER_IMAGE,
        min_length=1,
        max_length=IMAGE_MAX_LENGTH,
        pattern=IMAGE_PATTERN,
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
    image: str = Field(
        default=DEFAULT_IMAGE,
        min_length=1,
        max_length=IMAGE_MAX_LENGTH,
        pattern=IMAGE_PATTERN,
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
    str, StringConstraints(max_length=POD_NAME_MAX_LENGTH, pattern=rf"^{_DNS_SUBDOMAIN}$")
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
