import json

import pytest

from memcached_operator.shared.events import codec as events


@pytest.mark.unit
def test_encode_binary_mode_headers_and_body() -> None:
    obj = {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {
            "name": "cache",
            "namespace": "prod",
            "uid": "u-1",
            "resourceVersion": "42",
            "managedFields": [
                {"manager": "old", "time": "2026-01-01T00:00:00Z"},
                {"manager": "kubectl-client-side-apply", "time": "2026-01-02T00:00:00Z"},
            ],
        },
        "spec": {"size": 3},
    }
    headers, body = events.encode(kind="memcached", change="modified", obj=obj)
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == "io.memcached-operator.memcached.modified"
    assert headers["ce-id"] == headers["Nats-Msg-Id"] == "u-1:42:modified"
    assert headers["ce-subject"] == "prod/cache"
    assert headers["ce-datacontenttype"] == "application/json"
    assert headers["ce-fieldmanager"] == "kubectl-client-side-apply"
    decoded = json.loads(body)
    assert "managedFields" not in decoded["metadata"]
    assert decoded["spec"] == {"size": 3}
    event = events.decode(headers, body)
    assert event.change == "modified" and event.resource_version == "42"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("a b", "a%20b"),
        ('say "hi"', "say%20%22hi%22"),
        ("100%", "100%25"),
        ("é", "%C3%A9"),
        ("a/b:c", "a/b:c"),
    ],
)
def test_header_values_are_percent_encoded_as_the_binding_says(raw: str, encoded: str) -> None:
    assert events.encode_value(raw) == encoded
    assert events.decode_value(encoded) == raw


@pytest.mark.unit
def test_creations_and_deletions_are_keyed_by_uid_only() -> None:
    assert events.change_id("u", "7", "deleted") == events.change_id("u", "9", "deleted")
    # A replica that finds the object by relisting sees it at a later resourceVersion.
    assert events.change_id("u", "7", "added") == events.change_id("u", "9", "added")
    assert events.change_id("u", "7", "modified") != events.change_id("u", "9", "modified")
    assert events.change_id("u", "7", "added") != events.change_id("u", "7", "modified")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("headers", "data"),
    [({}, b"{}"), ({"ce-specversion": "1.0"}, b"not json"), ({"ce-specversion": "1.0"}, b"[1]")],
)
def test_decode_rejects_what_is_not_our_event(headers: dict[str, str], data: bytes) -> None:
    with pytest.raises(ValueError):
        events.decode(headers, data)


@pytest.mark.unit
def test_last_spec_writer_ignores_status_and_refuses_ties() -> None:
    def obj(*entries: tuple[str, str, str]) -> dict:  # type: ignore[type-arg]
        return {
            "metadata": {
                "managedFields": [
                    {"manager": m, "time": t, **({"subresource": sub} if sub else {})}
                    for m, t, sub in entries
                ]
            }
        }

    ours = ("memcached-operator", "2026-01-01T00:00:05Z", "")
    status = ("kube-controller-manager", "2026-01-01T00:00:09Z", "status")
    kubectl_same_second = ("kubectl", "2026-01-01T00:00:05Z", "")
    kubectl_later = ("kubectl", "2026-01-01T00:00:07Z", "")
    assert events.last_spec_writer(obj(ours, status)) == "memcached-operator"
    assert events.last_spec_writer(obj(ours, kubectl_same_second)) == ""
    assert events.last_spec_writer(obj(ours, kubectl_later, status)) == "kubectl"
    assert events.last_spec_writer(obj()) == ""
    # kubectl scale deployment: recorded for the scale subresource, without a time.
    scale = {"manager": "kubectl", "subresource": "scale", "operation": "Update"}
    with_scale = obj(ours)
    with_scale["metadata"]["managedFields"].append(scale)
    assert events.last_spec_writer(with_scale) == ""
