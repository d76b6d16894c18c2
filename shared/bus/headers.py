"""nats-py's message-header parser without its per-character whitespace scan.

nats-py (2.16) rejects header names containing whitespace by running a generator over every
character of every name (``any(c.isspace() for c in key)``). Our messages carry many headers
(a direct get returns a CloudEvent's ~20 ``ce-*`` headers with the stream's own), and that
scan was the largest single cost in the status service's CPU profile during the benchmark:
3.6 million generator steps for 21,000 messages. :func:`install` swaps in a parser with the
same result that checks each name with one regular-expression search.

It replaces a private static method of ``nats.aio.client.Client``, so it does so only when that
method is there and is static, and says whether it did; tests/unit/test_nats_headers.py checks
both parsers agree. Drop this module once nats-py parses headers without the scan.
"""

from __future__ import annotations

import re

from nats.aio.client import Client

_CRLF = b"\r\n"
# For str patterns, \s is what str.isspace() accepts (the unit test checks every ASCII char).
_WHITESPACE = re.compile(r"\s")


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines to a dict: nats-py's rules (names ASCII without whitespace,
    values stripped and decoded as UTF-8 with replacement), at a fraction of the cost."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WHITESPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


ORIGINAL = Client.__dict__.get("_parse_header_lines")


def install() -> bool:
    """Use :func:`parse_header_lines` in every nats-py client; False if nats-py changed."""
    if not isinstance(ORIGINAL, staticmethod):
        return False
    Client._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]
    return True
