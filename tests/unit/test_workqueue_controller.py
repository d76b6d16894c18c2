"""The Controller value: every name a controller goes by, derived from its name."""

from __future__ import annotations

import pytest

from memcached_operator.shared.api import contract
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.workqueue.controller import (
    RECONCILE_CONTROLLER,
    STATUS_CONTROLLER,
    Controller,
)

pytestmark = pytest.mark.unit


def test_the_reconcilers_names() -> None:
    c = RECONCILE_CONTROLLER
    key = ObjectKey("ns", "a")
    assert (c.name, c.durable, c.metrics_label) == ("reconcile", "mcop-reconcile", "reconcile")
    assert c.requests == "mcop.requests.reconcile"
    assert c.filter_subject == "mcop.requests.reconcile.>"
    assert c.request_subject(key) == "mcop.requests.reconcile.ns.a"
    assert c.outcome_subject(key) == "mcop.outcomes.reconcile.ns.a"
    assert c.deadletter_subject(key) == "mcop.deadletter.reconcile.ns.a"
    assert c.lease_name(key) == "reconcile.ns.a"
    assert c.lease_prefix == "$KV.mcop-leases.reconcile."
    assert c.tracer_name == "memcached-operator.reconciler"
    assert STATUS_CONTROLLER.tracer_name == "memcached-operator.status"


def test_the_contract_names_are_the_controllers() -> None:
    assert (contract.RECONCILE, contract.STATUS) == ("reconcile", "status")


def test_a_pipeline_controller_by_name_is_that_controller() -> None:
    assert Controller.of("reconcile") is RECONCILE_CONTROLLER
    assert Controller.of(STATUS_CONTROLLER) is STATUS_CONTROLLER
    assert Controller.of("wq-1").service == "wq-1"


def test_a_lease_name_escapes_what_a_kv_key_cannot_hold() -> None:
    name = RECONCILE_CONTROLLER.lease_name(ObjectKey("ns", "a.b"))
    assert "~" not in name and name.startswith("reconcile.ns.")


@pytest.mark.parametrize("bad", ["", "Reconcile", "re.concile", "-x", "x-"])
def test_a_controller_name_must_be_a_lower_case_dns_label(bad: str) -> None:
    with pytest.raises(ValueError):
        Controller(bad)
