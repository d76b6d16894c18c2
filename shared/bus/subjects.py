"""The NATS subject scheme: a reversible mapping between Kubernetes object keys and subjects.

Every subject is ``mcop.<family>.<kind-or-controller>.<namespace>.<name>``. Kubernetes names may
contain ``.`` (a NATS token separator) and other characters that are special or awkward in
subjects, so namespace and name are each encoded as one token: characters in ``[A-Za-z0-9-]``
stay as they are and every other byte of the UTF-8 encoding becomes ``~XX`` (upper-case hex).
``~`` never occurs in a Kubernetes name, so decoding is unambiguous, and an empty namespace
(cluster-scoped objects) is the token ``_``. Wildcards compose as usual: all events of one
namespace are ``mcop.events.*.<namespace>.*``.

Subjects are bounded: nats-server closes the connection of a client that sends a protocol line
longer than its ``max_control_line`` (4 KiB by default), and nats-py does not reconnect after
that, so one over-long name would cut a service off the bus. Every encoded token is at most
:data:`MAX_TOKEN_LENGTH` (a 253-character Kubernetes name, escaped: ``~XX`` triples a
character) and every subject at most :data:`MAX_SUBJECT_LENGTH`, half the default control line
(the line also carries the reply inbox and two sizes); longer ones raise
:class:`SubjectTooLong` before anything is sent. Names that come from watched objects are
checked to be Kubernetes names first (:func:`object_key`).
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

# The longest Kubernetes object name (a DNS-1123 subdomain), and its encoded form at worst.
MAX_NAME_LENGTH = 253
MAX_TOKEN_LENGTH = 3 * MAX_NAME_LENGTH
MAX_SUBJECT_LENGTH = 2048
# What the API server accepts as an object name (DNS-1123 subdomain) and as a namespace
# (DNS-1123 label), as k8s.io/apimachinery/pkg/util/validation says.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_DNS_LABEL_RE = re.compile(_DNS_LABEL)
MAX_NAMESPACE_LENGTH = 63


class SubjectTooLong(ValueError):
    """A token or subject longer than the bounds above; nothing was sent."""


class InvalidObjectKey(ValueError):
    """A namespace or name that is not a valid Kubernetes one."""


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


def is_object_name(text: str) -> bool:
    """Whether ``text`` is a valid name of a namespaced Kubernetes object (DNS-1123 subdomain)."""
    return len(text) <= MAX_NAME_LENGTH and _DNS_SUBDOMAIN.fullmatch(text) is not None


def is_namespace(text: str) -> bool:
    """Whether ``text`` is a valid namespace name (DNS-1123 label)."""
    return len(text) <= MAX_NAMESPACE_LENGTH and _DNS_LABEL_RE.fullmatch(text) is not None


def object_key(namespace: str, name: str) -> ObjectKey:
    """The key of a namespaced object whose namespace and name came from outside (a watched
    object's fields); raises :class:`InvalidObjectKey` unless both are valid Kubernetes names."""
    if not is_namespace(namespace):
        raise InvalidObjectKey(f"not a valid namespace: {shown(namespace)}")
    if not is_object_name(name):
        raise InvalidObjectKey(f"not a valid object name: {shown(name)}")
    return ObjectKey(namespace, name)


def shown(text: str, limit: int = 64) -> str:
    """``text`` for an error message or a log line: quoted, escaped and cut to ``limit``."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def encode_token(value: str) -> str:
    """Encode one Kubernetes name or namespace as a single, wildcard-free subject token;
    raises :class:`SubjectTooLong` when the token would exceed :data:`MAX_TOKEN_LENGTH`."""
    if value == "":
        return _CLUSTER_SCOPED
    if len(value) > MAX_TOKEN_LENGTH:
        raise SubjectTooLong(f"name too long for a subject token: {shown(value)}")
    if _ALL_SAFE.fullmatch(value):
        return value  # most names: nothing to escape
    out: list[str] = []
    for char in value:
        if _SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"~{byte:02X}" for byte in char.encode("utf-8"))
    token = "".join(out)
    if len(token) > MAX_TOKEN_LENGTH:
        raise SubjectTooLong(
            f"name too long for a subject token ({len(token)} characters escaped, at most "
            f"{MAX_TOKEN_LENGTH}): {shown(value)}"
        )
    return token


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
    """The subject for one object: ``mcop.<family>.<kind>.<namespace>.<name>``; raises
    :class:`SubjectTooLong` past the bounds of the module docstring."""
    out = ".".join(
        (PREFIX, family, kind.lower(), encode_token(key.namespace), encode_token(key.name))
    )
    if len(out) > MAX_SUBJECT_LENGTH:
        raise SubjectTooLong(f"subject longer than {MAX_SUBJECT_LENGTH}: {shown(out)}")
    return out


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
