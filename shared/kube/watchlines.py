"""The lines of a watch response, each read within a bound, so that one object cannot end a watch.

The API server writes a watch as one JSON event per line, and a line can be far longer than the
object it carries: Go's JSON encoder writes ``<``, ``>``, ``&`` and control characters as
six-byte ``\\u003c`` escapes, so a Deployment or Pod under etcd's 1.5 MiB object limit, whose
environment holds a megabyte of ``<``, arrives as a 9 MiB line. aiohttp's ``readline`` gave up
on any line longer than its buffer (4 MiB for kubernetes-asyncio's sessions) with
``LineTooLong``, which ended the whole watch: every tenant's changes of that kind then waited
for a relist, and a tenant who changed such an object every second kept the watch relisting.

:func:`lines` reads lines of any length and holds at most ``max_line`` bytes of one. A longer
line is yielded as an :class:`Oversized` — its length and its first ``keep`` bytes — and the rest
of it is dropped as it arrives, so memory stays bounded and the watch goes on. The default bound
(16 MiB) is above every line the API server's default limits allow, so by default every event
is read in full and what cannot be published is dead-lettered as any other too-large change is;
the bound is for clusters whose etcd takes larger objects. :func:`identify` reads what the line
was about from its first bytes: the API server writes the event's type and the object's
identity (name, namespace, uid, resourceVersion) before anything a tenant writes, in that order,
for every built-in kind.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

# Above every line the API server writes under its default limits: an object of etcd's 1.5 MiB
# with every byte escaped to six.
DEFAULT_MAX_LINE = 16 * 1024 * 1024
# The first bytes of an oversized line kept for the record: the event type and the object's
# identity come first (see identify), and a dead-letter record keeps 1 KiB of a body.
KEEP = 1024

# A typed object's watch event as the API server serializes it: the ObjectMeta fields in
# their declared order; only names, uids and versions, which it has validated, are captured.
_HEAD = re.compile(
    rb'\{"type":"(ADDED|MODIFIED|DELETED)","object":\{"kind":"[A-Za-z0-9]{1,63}",'
    rb'"apiVersion":"[a-z0-9./-]{1,100}","metadata":\{'
    rb'"name":"([a-z0-9.-]{1,253})",(?:"generateName":"[a-z0-9.-]{0,253}",)?'
    rb'"namespace":"([a-z0-9-]{1,63})","uid":"([0-9a-f-]{1,36})",'
    rb'"resourceVersion":"([0-9]{1,20})"'
)


@dataclass(frozen=True)
class Oversized:
    """A line longer than the bound: how long it was, its first bytes, and the bound."""

    size: int
    prefix: bytes
    limit: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Identity:
    """What an oversized line was about, as read from its first bytes."""

    change: str  # ADDED, MODIFIED or DELETED
    name: str
    namespace: str
    uid: str
    resource_version: str


def identify(prefix: bytes) -> Identity | None:
    """The event type and object identity at the start of a watch line; None when the line
    does not start as the API server writes a namespaced, typed object's event."""
    m = _HEAD.match(prefix)
    if m is None:
        return None
    change, name, namespace, uid, rv = (g.decode() for g in m.groups())
    return Identity(change, name, namespace, uid, rv)


async def lines(
    read: Callable[[], Awaitable[bytes]], *, max_line: int = DEFAULT_MAX_LINE, keep: int = KEEP
) -> AsyncIterator[bytes | Oversized]:
    """The newline-separated lines of what ``read`` returns (b'' at the end), without their
    newlines and skipping empty ones; a line over ``max_line`` bytes as :class:`Oversized`."""
    parts: list[bytes] = []  # the line read so far (nothing once it is oversized)
    size = 0  # its length so far
    prefix: bytes | None = None  # its first bytes, once it is oversized
    while True:
        chunk = await read()
        if not chunk:
            break
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end == -1 else chunk[start:end]
            if prefix is None and size + len(piece) > max_line:
                prefix = b"".join((*parts, piece[:keep]))[:keep]
                parts = []
            size += len(piece)
            if prefix is None:
                if end != -1 and not parts:
                    if piece:
                        yield piece  # the common case: a whole line within one chunk
                elif piece:
                    parts.append(piece)
            if end == -1:
                break
            if prefix is not None:
                yield Oversized(size, prefix, max_line)
            elif parts:
                yield b"".join(parts)
            parts, size, prefix = [], 0, None
            start = end + 1
    if prefix is not None:
        yield Oversized(size, prefix, max_line)
    elif parts:
        yield b"".join(parts)
