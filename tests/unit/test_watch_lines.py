"""Watch lines within a bound (shared/kube/watchlines.py): every line whole whatever the chunks,
a line over the bound reported by its size and first bytes while the lines after it go on, and
an oversized line's object read only from what the API server itself writes first."""

from __future__ import annotations

import asyncio
import json

import pytest

from memcached_operator.shared.kube.watchlines import Identity, Oversized, identify, lines

pytestmark = pytest.mark.unit


def read_all(data: bytes, *, chunk: int, max_line: int, keep: int = 16) -> list[bytes | Oversized]:
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]

    async def read() -> bytes:
        return pieces.pop(0) if pieces else b""

    async def collect() -> list[bytes | Oversized]:
        return [line async for line in lines(read, max_line=max_line, keep=keep)]

    return asyncio.run(collect())


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10_000])
def test_lines_come_out_whole_however_the_stream_is_cut(chunk: int) -> None:
    data = b'{"a":1}\n{"b":22}\n\n{"c":333}\n{"tail":4}'
    assert read_all(data, chunk=chunk, max_line=100) == [
        b'{"a":1}',
        b'{"b":22}',
        b'{"c":333}',
        b'{"tail":4}',
    ]


@pytest.mark.parametrize("chunk", [1, 5, 40, 10_000])
def test_a_line_over_the_bound_is_reported_and_the_next_one_read(chunk: int) -> None:
    big = b"<" * 300
    data = b"first\n" + big + b"\nnext\n"
    assert read_all(data, chunk=chunk, max_line=100, keep=16) == [
        b"first",
        Oversized(size=300, prefix=b"<" * 16),
        b"next",
    ]


def test_a_line_exactly_at_the_bound_is_read() -> None:
    assert read_all(b"x" * 100 + b"\ny\n", chunk=7, max_line=100) == [b"x" * 100, b"y"]


def test_an_oversized_last_line_without_a_newline_is_reported() -> None:
    assert read_all(b"ok\n" + b"z" * 50, chunk=8, max_line=10, keep=4) == [
        b"ok",
        Oversized(size=50, prefix=b"zzzz"),
    ]


def _event(change: str, obj: dict[str, object]) -> bytes:
    # As the API server writes it: compact, keys in the order the Go types declare them.
    return json.dumps({"type": change, "object": obj}, separators=(",", ":")).encode()


UID = "0b1f8c1e-6a4e-4f0e-9a52-9d7a5b0e8c11"


def test_an_oversized_lines_object_is_read_from_what_the_api_server_writes_first() -> None:
    line = _event(
        "MODIFIED",
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": "cache-7d9f-abcde",
                "generateName": "cache-7d9f-",
                "namespace": "team-a",
                "uid": UID,
                "resourceVersion": "4711",
                "annotations": {"blob": "<" * 100},
            },
        },
    )
    assert identify(line[:1024]) == Identity("MODIFIED", "cache-7d9f-abcde", "team-a", UID, "4711")


def test_a_line_that_does_not_start_as_the_api_server_writes_names_nobody() -> None:
    # A map-shaped object (keys sorted) whose annotation is called "name": its value must not
    # be taken for the object's name.
    forged = _event(
        "ADDED",
        {
            "apiVersion": "cache.example.com/v1alpha1",
            "kind": "Memcached",
            "metadata": {"annotations": {"name": "victim"}, "name": "attacker"},
        },
    )
    assert identify(forged) is None
    assert identify(b'{"type":"ADDED","object":{"kind":"Pod"') is None
