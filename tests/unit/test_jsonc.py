"""The fast JSON codec answers as the standard library did, for hostile input too."""

from __future__ import annotations

import json
import math

import pytest

from memcached_operator.shared.events import codec as events
from memcached_operator.shared.runtime import jsonc

pytestmark = pytest.mark.unit


def test_round_trips_an_object_compactly_in_utf8() -> None:
    obj = {"metadata": {"name": "cache-é", "labels": {"a": "b"}}, "spec": {"size": 3}}
    data = jsonc.dumps(obj)
    assert data == json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    assert jsonc.loads(data) == obj


def test_what_the_standard_library_parsed_still_parses() -> None:
    # orjson refuses NaN and lone surrogates; a message that parsed before still does.
    assert math.isnan(jsonc.loads(b'{"a":NaN}')["a"])
    assert jsonc.loads(b'"\\ud800"') == "\ud800"


def test_what_was_refused_is_still_a_value_error() -> None:
    for bad in (b"{", b"\xff\xfe{}", b'{"a":1}x', "[1,"):
        with pytest.raises(ValueError):
            jsonc.loads(bad)


def test_writes_what_orjson_cannot() -> None:
    # Integers beyond 64 bits and lone surrogates (from a hostile object) are still written.
    assert jsonc.loads(jsonc.dumps({"n": 2**70})) == {"n": 2**70}
    assert jsonc.loads(jsonc.dumps({"s": "\ud800"})) == {"s": "\ud800"}


def test_an_event_of_an_object_with_a_lone_surrogate_is_encoded_and_decoded() -> None:
    obj = {"metadata": {"name": "x", "namespace": "ns", "annotations": {"a": "\udfff"}}}
    headers, body = events.encode(kind="memcached", change="added", obj=obj)
    assert events.decode(headers, body).data["metadata"]["annotations"] == {"a": "\udfff"}
