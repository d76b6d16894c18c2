"""Unit tests of the audit's records: who and what a record is about comes from its subject;
headers and bodies that claim otherwise are marked, with what they claimed."""

from __future__ import annotations

import json

import pytest

from memcached_operator.audit.command import disagreements, record
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events

pytestmark = pytest.mark.unit


def event(namespace: str, name: str) -> tuple[dict[str, str], bytes]:
    obj = {
        "metadata": {"name": name, "namespace": namespace, "uid": "u1", "resourceVersion": "7"},
        "spec": {"size": 1},
    }
    return events.encode(kind="memcached", change="modified", obj=obj)


def test_an_honest_event_agrees_with_its_subject() -> None:
    headers, body = event("u1", "victim1")
    subject = subjects.subject(subjects.EVENTS, "memcached", ObjectKey("u1", "victim1"))
    rec = record(headers, body, subject)
    assert (rec["namespace"], rec["name"], rec["disagrees"]) == ("u1", "victim1", [])


def test_namespace_and_name_come_from_the_subject_and_claims_are_marked() -> None:
    headers, body = event("kube-system", "other")
    subject = subjects.subject(subjects.EVENTS, "memcached", ObjectKey("u1", "victim1"))
    rec = record(headers, body, subject)
    assert (rec["namespace"], rec["name"]) == ("u1", "victim1")
    assert sorted(rec["disagrees"]) == [
        "ce-name=other",
        "ce-namespace=kube-system",
        "metadata.name=other",
        "metadata.namespace=kube-system",
    ]


def test_a_body_alone_that_names_another_object_is_marked() -> None:
    headers, _ = event("u1", "victim1")
    forged = json.dumps({"metadata": {"namespace": "kube-system", "name": "victim1"}}).encode()
    subject = subjects.subject(subjects.EVENTS, "memcached", ObjectKey("u1", "victim1"))
    assert record(headers, forged, subject)["disagrees"] == ["metadata.namespace=kube-system"]


def test_a_kind_header_other_than_the_subjects_is_marked() -> None:
    headers, body = event("u1", "victim1")
    subject = subjects.subject(subjects.EVENTS, "deployment", ObjectKey("u1", "victim1"))
    assert disagreements(subject, headers, json.loads(body)) == ["ce-kind=memcached"]


def test_an_outcome_is_checked_by_its_key() -> None:
    subject = subjects.subject(subjects.OUTCOMES, "reconcile", ObjectKey("u1", "victim1"))
    headers = {"ce-kind": "reconcile", "ce-namespace": "u1", "ce-name": "victim1"}
    assert disagreements(subject, headers, {"key": "u1/victim1"}) == []
    assert disagreements(subject, headers, {"key": "kube-system/victim1"}) == [
        "key.namespace=kube-system"
    ]


def test_a_subject_that_is_not_the_operators_makes_the_record_malformed() -> None:
    headers, body = event("u1", "victim1")
    with pytest.raises(ValueError):
        record(headers, body, "mcop.events.memcached.only-four")
