"""The NATS subject scheme: a reversible mapping between Kubernetes object keys and subjects.

Every subject is ``mcop.<family>.<kind-or-controller>.<namespace>.<name>``. Kubernetes names may
contain ``.`` (a NATS token separator) and other characters that are special or awkward in
subjects, so namespace and name are each encoded as one token: characters in ``[A-Za-z0-9-]``
stay as they are and every other byte of the UTF-8 encoding becomes ``~XX`` (upper-case hex).
``~`` never occurs in a Kubernetes name, so decoding is unambiguous, and an empty namespace
(cluster-scoped objects) is the token ``_``. Wildcards compose as usual: all events of one
namespace are ``mcop.events.*.<namespace>.*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "mcop"
EVENTS = "events"
OUTCOMES = "outcomes"
REQUESTS = "requests"
DEADLETTER = "deadletter"

_SAFE = re.compile(r"[A-Za-z0-9-]")
_ALL_SAFE = re.compile(r"[A-Za-z0-9-]+")
_ESCAPE = re.compile(r"~([0-9A-F]{2})")
_CLUSTER_SCOPED = "_"


@dataclass(frozen=True, order=True)
class ObjectKey:
    """Namespace and name of one Kubernetes object (namespace "" for cluster-scoped)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def parse(cls, text: str) -> ObjectKey:
        namespace, sep, name = text.partition("/")
        return cls(namespace, name) if sep else cls("", namespace)


def encode_token(value: str) -> str:
    """Encode one Kubernetes name or namespace as a single, wildcard-free subject token."""
    if value == "":
        return _CLUSTER_SCOPED
    if _ALL_SAFE.fullmatch(value):
        return value  # most names: nothing to escape
    out: list[str] = []
    for char in value:
        if _SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"~{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def decode_token(token: str) -> str:
    """Invert :func:`encode_token`; raises ValueError on a token it could not have produced."""
    if token == _CLUSTER_SCOPED:
        return ""
    if not token or "." in token or "*" in token or ">" in token:
        raise ValueError(f"not a single subject token: {token!r}")
    raw = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(token):
        raw += token[pos : match.start()].encode("ascii")
        raw.append(int(match.group(1), 16))
        pos = match.end()
    rest = token[pos:]
    if "~" in rest:
        raise ValueError(f"bad escape in subject token: {token!r}")
    raw += rest.encode("ascii")
    return raw.decode("utf-8")


def subject(family: str, kind: str, key: ObjectKey) -> str:
    """The subject for one object: ``mcop.<family>.<kind>.<namespace>.<name>``."""
    return ".".join(
        (PREFIX, family, kind.lower(), encode_token(key.namespace), encode_token(key.name))
    )


def wildcard(family: str, kind: str = "*", namespace: str | None = None) -> str:
    """A filter for one family, optionally one kind and one namespace."""
    ns = "*" if namespace is None else encode_token(namespace)
    return ".".join((PREFIX, family, kind.lower() if kind != "*" else "*", ns, "*"))


@dataclass(frozen=True)
class ParsedSubject:
    family: str
    kind: str
    key: ObjectKey


def parse(subject_: str) -> ParsedSubject:
    """Split a subject produced by :func:`subject` back into family, kind and key."""
    parts = subject_.split(".")
    if len(parts) != 5 or parts[0] != PREFIX:
        raise ValueError(f"not a memcached-operator subject: {subject_!r}")
    _, family, kind, namespace, name = parts
    return ParsedSubject(family, kind, ObjectKey(decode_token(namespace), decode_token(name)))
