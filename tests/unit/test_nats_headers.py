"""The faster header parser gives nats-py's own results (shared/bus/headers.py)."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from memcached_operator.shared.bus import headers as nats_headers

pytestmark = pytest.mark.unit

CORPUS = [
    b"",
    b"Nats-Stream: MCOP_EVENTS\r\nNats-Sequence: 42\r\n\r\n",
    b"ce-id: abc:1:added\r\nce-type:io.mcop.memcached.added\r\nce-source:\t/x \r\n",
    b"no colon here\r\n: empty name\r\nName:\r\n",
    b"Bad Name: v\r\nBad\tName: v\r\n\xc3\xa9t\xc3\xa9: accented name\r\n",
    "Value: caf\u00e9 \u2603\r\n".encode(),
    b"Broken: \xff\xfe\r\nLast: wins\r\nLast: twice\r\n",
    *(b"K" + bytes([c]) + b"ey: v\r\nOk: 1\r\n" for c in range(128)),
]


@pytest.mark.parametrize("raw", CORPUS)
def test_the_parser_agrees_with_nats_py(raw: bytes) -> None:
    original = nats_headers.ORIGINAL
    assert isinstance(original, staticmethod), "nats-py no longer has the parser this replaces"
    assert nats_headers.parse_header_lines(raw) == original.__func__(raw)


def test_installing_replaces_the_clients_parser() -> None:
    assert nats_headers.install()
    assert Client._parse_header_lines(b"A: 1\r\nB C: 2\r\n") == {"A": "1"}
    assert Client.__dict__["_parse_header_lines"].__func__ is nats_headers.parse_header_lines
