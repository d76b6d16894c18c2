"""Issue 20: the pure parts of `kubectl memcached`: revisions from recorded events, spec diffs,
dead-letter records, rollout words, the table, time flags, and the audit user's new reads."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json

import pytest

from memcached_operator.admin import nats_auth, nats_table
from memcached_operator.audit import dlq, explain, history, kubectl, render
from memcached_operator.audit.command import Stored
from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.shared.workqueue import deadletter

pytestmark = pytest.mark.unit

KEY = ObjectKey("team-a", "cache")
TRACE = "0af7651916cd43dd8448eb211c80319c"


def _event(seq: int, change: str, generation: int, spec: dict, conditions: list | None = None,
           manager: str = "kubectl-client-side-apply", uid: str = "u1") -> Stored:  # fmt: skip
    obj = {
        "metadata": {
            "namespace": KEY.namespace, "name": KEY.name, "uid": uid, "generation": generation,
            "resourceVersion": str(seq), "managedFields": [{"manager": manager, "time": "2026-12-02T10:00:00Z"}],
        },
        "spec": spec,
        "status": {"conditions": conditions or []},
    }  # fmt: skip
    headers, body = events.encode(
        kind="memcached", change=change, obj=obj,
        extra_headers={"traceparent": f"00-{TRACE}-b7ad6b7169203331-01"},
    )  # fmt: skip
    return Stored(subjects.subject(subjects.EVENTS, "memcached", KEY), seq, headers, body)


def _outcome(seq: int, generation: int, result: str = "success", uid: str = "u1") -> Stored:
    o = Outcome(key=str(KEY), uid=uid, generation=generation, result=result,  # type: ignore[arg-type]
                time=dt.datetime(2026, 12, 2, 10, 0, seq, tzinfo=dt.UTC), trace_id=TRACE)  # fmt: skip
    return Stored(subjects.subject(subjects.OUTCOMES, "reconcile", KEY), seq, {}, o.to_json())


AVAILABLE = [{"type": "Available", "status": "True", "reason": "Ready", "message": "all ready"}]


def test_revisions_are_generations_with_a_diff_an_author_outcomes_and_transitions() -> None:
    memcached = [
        _event(1, "added", 1, {"size": 1}),
        _event(3, "modified", 1, {"size": 1}, AVAILABLE, manager="memcached-operator-status"),
        _event(4, "modified", 2, {"size": 3}, AVAILABLE, manager="kubectl-scale"),
        _event(6, "modified", 3, {"size": 3, "image": "m:2"}, AVAILABLE, manager="kubectl-patch"),
    ]
    outcomes = [_outcome(2, 1), _outcome(5, 2), _outcome(7, 3, "error")]
    revisions = history.build(memcached, outcomes)
    assert [r["revision"] for r in revisions] == [1, 2, 3]
    assert revisions[0]["change"] == "created (size=1)"
    assert revisions[1]["change"] == "size: 1 -> 3"
    assert revisions[1]["fieldManager"] == "kubectl-scale"
    assert revisions[2]["changes"] == [{"path": "image", "from": None, "to": "m:2"}]
    assert revisions[2]["change"] == "+image=m:2"
    assert [r["outcome"] for r in revisions] == ["success", "success", "error"]
    # The Available transition belongs to revision 1, and is not repeated while unchanged.
    assert [t["type"] for t in revisions[0]["transitions"]] == ["Available"]
    assert revisions[1]["transitions"] == [] and revisions[0]["status"] == "Available=True"
    assert revisions[0]["traceId"] == TRACE


def test_a_recreated_cr_starts_a_new_line_of_revisions_and_deletion_is_shown() -> None:
    memcached = [
        _event(1, "added", 1, {"size": 1}),
        _event(2, "deleted", 1, {"size": 1}),
        _event(3, "added", 1, {"size": 2}, uid="u2"),
    ]
    revisions = history.build(memcached, [_outcome(4, 1, uid="u2")])
    assert [r["uid"] for r in revisions] == ["u1", "u2"]
    assert revisions[0]["status"] == "deleted"
    assert revisions[1]["change"] == "created (size=2)" and revisions[1]["outcome"] == "success"
    assert revisions[0]["outcomes"] == []


def test_malformed_records_are_reported_and_left_out() -> None:
    bad_event = Stored("mcop.events.memcached.team-a.cache", 9, {"ce-specversion": "0.3"}, b"{}")
    bad_outcome = Stored("mcop.outcomes.reconcile.team-a.cache", 10, {}, b'{"key": 1}')
    err = io.StringIO()
    revisions = history.build(
        [_event(1, "added", 1, {"size": 1}), bad_event], [bad_outcome], err=err
    )
    assert len(revisions) == 1 and revisions[0]["outcomes"] == []
    assert "malformed event 9" in err.getvalue() and "malformed outcome 10" in err.getvalue()


def test_a_long_diff_is_summarised_in_words_but_complete_in_json() -> None:
    before = {f"k{i}": i for i in range(10)}
    after = {f"k{i}": i + 1 for i in range(10)}
    changes = history.spec_diff(before, after)
    assert len(changes) == 10
    assert history.describe(changes, created=False).endswith("(+6 more)")
    assert history.spec_diff({"a": {"b": 1}}, {"a": {}}) == [{"path": "a.b", "from": 1, "to": None}]


def test_a_dead_letter_record_comes_from_its_subject_and_headers() -> None:
    headers = {
        deadletter.DL_REASON: "MissingHeader", deadletter.DL_ERROR: "missing header(s): Mcop-Origin",
        deadletter.DL_DELIVERIES: "1", deadletter.DL_CONTROLLER: "reconcile", deadletter.DL_TIME: "2026-12-02T10:00:00+00:00",
        "X-Test": "poison",
    }  # fmt: skip
    rec = dlq.dead_letter_record(Stored("mcop.deadletter.reconcile.team-a.cache", 42, headers, b""))
    assert rec["key"] == "team-a/cache" and rec["controller"] == "reconcile"
    assert rec["reason"] == "MissingHeader" and rec["sequence"] == 42
    unkeyed = dlq.dead_letter_record(Stored("mcop.deadletter.reconcile._._", 43, headers, b""))
    assert unkeyed["name"] == "" and "unparsable" in unkeyed["key"]


def test_the_dead_letter_filter_encodes_names_and_never_widens() -> None:
    assert dlq.filter_subject("team-a", "a.b") == "mcop.deadletter.*.team-a.a~2Eb"
    assert dlq.filter_subject(None, None) == "mcop.deadletter.*.*.*"
    assert dlq.filter_subject("x", None, "reconcile") == "mcop.deadletter.reconcile.x.*"


def test_write_verbs_refuse_any_identity_but_the_admin() -> None:
    args = argparse.Namespace()
    session = kubectl.Session(args, "ns", None, None, "audit")  # type: ignore[arg-type]
    with pytest.raises(dlq.Refused, match="needs the NATS 'admin' identity"):
        dlq.require_admin(session, "retry")
    dlq.require_admin(kubectl.Session(args, "ns", None, None, "admin"), "retry")  # type: ignore[arg-type]


def test_the_nats_identity_is_the_user_variable_or_the_urls_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NATS_USER", raising=False)
    assert kubectl.nats_identity("nats://admin:secret@127.0.0.1:4222") == "admin"
    assert kubectl.nats_identity("nats://127.0.0.1:4222") == ""
    monkeypatch.setenv("NATS_USER", "audit")
    assert kubectl.nats_identity("nats://admin:secret@127.0.0.1:4222") == "audit"


def test_rollout_words_follow_kubectl_rollout_status() -> None:
    dep = {"metadata": {"generation": 2}, "spec": {"replicas": 3},
           "status": {"observedGeneration": 2, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3}}  # fmt: skip
    assert explain.rollout(dep)["state"] == "Complete"
    dep["status"]["readyReplicas"] = dep["status"]["availableReplicas"] = 1
    assert explain.rollout(dep)["state"] == "Progressing"
    dep["status"]["conditions"] = [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]
    assert explain.rollout(dep)["state"] == "Stalled"
    assert explain.rollout(None) == {"state": "Missing"}


def test_an_unready_pod_gives_its_most_telling_reason() -> None:
    waiting = {
        "status": {
            "containerStatuses": [
                {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no"}}}
            ]
        }
    }
    assert explain._not_ready_reason(waiting) == ("ImagePullBackOff", "no")
    unready = {"status": {"conditions": [{"type": "PodScheduled", "status": "True"},
                                         {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}]}}  # fmt: skip
    assert explain._not_ready_reason(unready) == ("ContainersNotReady", "")


def test_the_trace_link_comes_from_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(explain.TRACE_URL_VARIABLE, raising=False)
    assert explain.trace_url(TRACE) == ""
    monkeypatch.setenv(explain.TRACE_URL_VARIABLE, "https://t.example/trace/{trace_id}")
    assert explain.trace_url(TRACE) == f"https://t.example/trace/{TRACE}"
    assert explain.trace_url("") == ""


def test_the_table_is_aligned_one_line_per_row_and_plain_off_a_terminal() -> None:
    out = io.StringIO()
    rows = [{"a": "x", "b": "line one\nline two"}, {"a": "longer", "b": "y" * 200}]
    cols = (render.Column("A", "a"), render.Column("B", "b"), render.Column("W", "a", wide=True))
    render.table(rows, cols, wide=False, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "A        B" and "\x1b" not in out.getvalue()
    assert lines[1] == "x        line one line two"
    assert lines[2].endswith("...") and len(lines[2]) < 100
    wide = io.StringIO()
    render.table(rows, cols, wide=True, out=wide)
    assert wide.getvalue().splitlines()[0].split() == ["A", "B", "W"]


def test_time_flags_take_a_duration_or_an_rfc3339_time() -> None:
    ago = render.parse_time("10m")
    assert dt.timedelta(minutes=9) < dt.datetime.now(dt.UTC) - ago < dt.timedelta(minutes=11)
    assert render.parse_time("2026-12-02T10:00:00Z") == dt.datetime(2026, 12, 2, 10, tzinfo=dt.UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        render.parse_time("yesterday")


def test_the_audit_user_may_read_dead_letters_requests_and_leases_but_write_nothing() -> None:
    cells = nats_table.table()["`DIRECT.GET` batched (any subject)"]
    assert cells["audit"] == ["events", "requests", "deadletter", "leases"]
    audit = nats_auth.user("audit")
    for subject in ("mcop.requests.reconcile.a.b", "mcop.deadletter.reconcile.a.b",
                    "$KV.mcop-leases.reconcile.a.b", "$JS.API.STREAM.PURGE.MCOP_DEADLETTER",
                    "$JS.API.STREAM.MSG.DELETE.MCOP_DEADLETTER"):  # fmt: skip
        assert not nats_auth.allowed(audit, "pub", subject), subject


def test_the_plugin_parses_every_verb() -> None:
    parser = kubectl.build_parser()
    for argv in (["history", "c", "--revision", "2", "-o", "yaml"], ["explain", "c", "-n", "x"],
                 ["dlq", "list", "-A", "--since", "1h"], ["dlq", "show", "3"], ["dlq", "retry", "3"],
                 ["dlq", "purge", "c", "--yes"], ["audit", "--follow", "-o", "wide"]):  # fmt: skip
        assert parser.parse_args(argv).verb == argv[0]
    with pytest.raises(SystemExit):
        parser.parse_args(["history", "c", "-A"])  # one object's history has one namespace
    json.dumps(vars(parser.parse_args(["dlq", "list"])), default=str)


def test_a_spec_change_recorded_under_the_operators_own_manager_has_no_known_author() -> None:
    memcached = [
        _event(1, "added", 1, {"size": 1}),
        # kubectl scale writes through the scale subresource, whose managedFields entry has no
        # time: the newest entry by time is then the status service's.
        _event(2, "modified", 2, {"size": 3}, manager="memcached-operator-status"),
    ]
    created, scaled = history.build(memcached, [])
    assert created["fieldManager"] == "kubectl-client-side-apply"
    assert scaled["fieldManager"] == ""
