"""Kubernetes quantities and resource names: their grammar and bounds, exact parsing, and the
CEL rules that check them in the API server.

A quantity ("64Mi", "500m", 67108864) is parsed exactly (:func:`parse_quantity`, a Fraction),
so that "64Mi" and "67108864" compare equal. Every bound here is checked by the API server's
schema before a CEL rule runs, so that no object can make validation expensive (see the
comments in ``shared/api/models.py``); each rule a structural schema cannot express is written
twice, side by side: as a Python check and as its CEL twin. The Memcached models use them.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated

from pydantic import AfterValidator, Field, JsonValue, Strict, StringConstraints

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
DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
# A container resource name as a Pod accepts it: a standard one, a huge page size, or an
# extended resource <domain>/<name> (253 + 1 + 63 characters at most).
RESOURCE_NAME_PATTERN = (
    rf"^(cpu|memory|ephemeral-storage|hugepages-[0-9]+([KMGTPE]i|[kMGTPE])?"
    rf"|{DNS_SUBDOMAIN}/{_QUALIFIED_NAME})$"
)
RESOURCE_NAME_MAX_LENGTH = 317
# Resources of one container: cpu, memory, ephemeral-storage, a few huge page sizes and
# extended resources; more is a mistake, and a bound keeps the map's CEL rules cheap.
RESOURCES_MAX = 16
RESOURCE_NAMES_MESSAGE = (
    "keys must be resource names (cpu, memory, ephemeral-storage, hugepages-<size> or"
    f" <domain>/<name>) of at most {RESOURCE_NAME_MAX_LENGTH} characters"
)


def cel_string(text: str) -> str:
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
            f"!{value}.matches({cel_string(QUANTITY_PATTERN)}) || !isQuantity({value})"
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


def resource_names_rule() -> dict[str, JsonValue]:
    """The CEL twin of ResourceName, on a limits or requests map: a structural schema cannot
    constrain the keys of a map."""
    return {
        "rule": (
            f"self.all(k, k.size() <= {RESOURCE_NAME_MAX_LENGTH}"
            f" && k.matches({cel_string(RESOURCE_NAME_PATTERN)}))"
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


def limit_below_request_message(resource: str) -> str:
    return f"resources.limits.{resource} must not be less than resources.requests.{resource}"


def limit_not_below_request_rule(resource: str) -> dict[str, str]:
    """The CEL twin of ResourceRequirements._limits_not_below_requests for one resource."""
    # Int-or-string values are `dyn` in CEL; string() accepts both forms. The pattern keeps
    # quantity() from values the schema rejected (the API server still runs this rule for
    # them), and isQuantity a malformed value from turning into an evaluation error.
    limit = f"string(self.limits['{resource}'])"
    request = f"string(self.requests['{resource}'])"
    pattern = cel_string(QUANTITY_PATTERN)
    rule = (
        f"!has(self.limits) || !has(self.requests)"
        f" || !('{resource}' in self.limits) || !('{resource}' in self.requests)"
        f" || !{limit}.matches({pattern}) || !{request}.matches({pattern})"
        f" || !isQuantity({limit}) || !isQuantity({request})"
        f" || quantity({limit}).compareTo(quantity({request})) >= 0"
    )
    return {
        "rule": rule,
        "message": limit_below_request_message(resource),
    }
