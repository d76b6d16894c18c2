"""JSON for the hot paths: every watch line, event, direct get and API answer goes through here.

Each change crosses JSON several times on its way (the API server's watch line, the event's
body, each reader of the event, the apply and its answer); with the standard library's codec
that was about an eighth of the watcher's CPU and a share of every other service's. orjson
parses and writes the same JSON several times faster.

What it gives is the standard library's answer, with two differences callers rely on being
harmless: output is compact UTF-8 (no ``\\uXXXX`` escapes), and an integer beyond 64 bits
parses as a float (the API server never sends one: its integers are int64). Input orjson
refuses but the standard library takes (NaN, a lone surrogate, a value orjson cannot write)
goes to the standard library, so what parsed before parses now, and what was refused still
raises :class:`ValueError` (bytes must be UTF-8, as RFC 8259 says).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON (bytes must be UTF-8); ValueError when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # UnicodeDecodeError is a ValueError too.
        return json.loads(data if isinstance(data, str) else bytes(data).decode("utf-8"))


def dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8 bytes."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()
