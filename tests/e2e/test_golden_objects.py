"""Issue 19 acceptance: a CR with each option gets exactly the objects and fields expected.

The Deployment, Service and PodDisruptionBudget are read back from the session's real API
server and compared with golden files in tests/fixtures/golden/ (one per spec). What is
compared is the applied object: the live object cut down to the fields the operator's field
manager owns (its server-side-apply entry in managedFields), so everything the operator sets
is kept and nothing it does not set is (uid, resourceVersion, creationTimestamp, status, the
defaults the API server fills in, other controllers' annotations). The CR's name, namespace
and uid, and the trace an apply carries, become placeholders, so the same golden file serves
a fresh CR and one changed into that spec.

``UPDATE_GOLDEN=1 pytest tests/e2e/test_golden_objects.py`` rewrites the files from what the
operator applies (once each object matches the reconciler's own desired state): review the
diff before committing it.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api.contract import FIELD_MANAGER
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.runtime.telemetry import TRACEPARENT_ANNOTATION
from tests.conftest import Cluster
from tests.support import Services, wait_for

pytestmark = pytest.mark.e2e
GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN", "") not in ("", "0")
KINDS = ("deployment", "service", "pdb")

# Each option of the spec, alone or with what it needs, and the objects it must produce.
SPECS: dict[str, dict[str, Any]] = {
    "one-pod": {"size": 1},
    "three-pods": {"size": 3},
    "memory-mb": {"size": 2, "memoryMB": 96, "resources": {"limits": {"memory": "128Mi"}}},
    "memory-limit-only": {"size": 1, "resources": {"limits": {"memory": "256Mi"}}},
    "no-memory-limit": {"size": 2, "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
    "max-connections": {"size": 1, "maxConnections": 4096},
    "max-item-size": {"size": 1, "maxItemSize": 4 << 20},
    "monitoring-on": {"size": 2, "monitoring": {"enabled": True}},
    "monitoring-off": {"size": 1, "monitoring": {"enabled": False}},
    "resources": {
        "size": 2,
        "image": "memcached:1.6.38",
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
    },
}


def applied_fields(obj: Any, fields: Any) -> Any:
    """``obj`` cut down to a managedFields ``fieldsV1`` set: ``f:<name>`` a field of a map,
    ``k:<json>`` the item of a keyed list with those keys, ``v:<json>`` an item of a set; an
    empty set below a field means the whole value (a scalar, or a list replaced as a whole)."""
    members = {k: v for k, v in (fields or {}).items() if k != "."}
    if not members:
        return obj
    if isinstance(obj, dict):
        return {
            key[2:]: applied_fields(obj[key[2:]], sub)
            for key, sub in members.items()
            if key.startswith("f:") and key[2:] in obj
        }
    if isinstance(obj, list):
        kept = []
        for item in obj:
            for key, sub in members.items():
                if key.startswith("k:") and isinstance(item, dict):
                    wanted = json.loads(key[2:])
                    if all(item.get(k) == v for k, v in wanted.items()):
                        kept.append(applied_fields(item, sub))
                        break
                elif key.startswith("v:") and item == json.loads(key[2:]):
                    kept.append(item)
                    break
        return kept
    return obj


def applied(live: dict[str, Any]) -> dict[str, Any]:
    """The part of ``live`` the operator's server-side apply owns, with apiVersion and kind."""
    (entry,) = [
        f
        for f in live["metadata"].get("managedFields") or []
        if f.get("manager") == FIELD_MANAGER and f.get("operation") == "Apply"
    ]
    out = applied_fields(live, entry["fieldsV1"])
    assert isinstance(out, dict)
    return {"apiVersion": live["apiVersion"], "kind": live["kind"], **out}


def placeholders(value: Any, names: dict[str, str]) -> Any:
    """Every string equal to one of ``names`` replaced by its placeholder (exact values only:
    a name inside a longer string stays, so nothing is hidden by accident)."""
    if isinstance(value, dict):
        out = {k: placeholders(v, names) for k, v in value.items()}
        annotations = out.get("annotations")
        if isinstance(annotations, dict) and TRACEPARENT_ANNOTATION in annotations:
            annotations[TRACEPARENT_ANNOTATION] = "<traceparent>"
        return out
    if isinstance(value, list):
        return [placeholders(v, names) for v in value]
    return names.get(value, value) if isinstance(value, str) else value


def live_objects(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        proc = cluster.kubectl(
            "get", kind, "-n", namespace, name, "-o", "json", "--show-managed-fields", check=False
        )
        if proc.returncode != 0:
            assert "NotFound" in proc.stderr, proc.stderr
            out[kind] = None
        else:
            out[kind] = json.loads(proc.stdout)
    return out


def normalised(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The applied Deployment, Service and PDB (None when absent) of one CR, as in the files."""
    mc = cluster.get_mc(namespace, name)
    names = {name: "<name>", namespace: "<namespace>", mc["metadata"]["uid"]: "<uid>"}
    return {
        kind: None if obj is None else placeholders(applied(obj), names)
        for kind, obj in live_objects(cluster, namespace, name).items()
    }


def converged_to_desired(cluster: Cluster, namespace: str, name: str) -> bool:
    """Each object as the reconciler's own functions want it (only to know when to record)."""
    cr = Memcached.from_api(cluster.get_mc(namespace, name))
    desired = {
        "deployment": desired_deployment(cr),
        "service": desired_service(cr),
        "pdb": desired_pdb(cr),
    }
    live = live_objects(cluster, namespace, name)
    return all(
        (live[kind] is None)
        if want is None
        else live[kind] is not None and matches(live[kind], want)
        for kind, want in desired.items()
    )


def render(objects: dict[str, Any]) -> str:
    return json.dumps(objects, indent=2, sort_keys=True) + "\n"


def expect_golden(
    cluster: Cluster, namespace: str, name: str, case: str, *, record: bool = False
) -> None:
    """The CR's objects become exactly the golden ones of ``case`` (or, with ``record``, are
    written as them once converged)."""
    path = GOLDEN / f"{case}.json"
    if record:
        wait_for(
            lambda: converged_to_desired(cluster, namespace, name),
            timeout=60,
            what=f"{name}'s objects for {case}",
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(normalised(cluster, namespace, name)))
        return
    golden = path.read_text()
    last: list[str] = [""]

    def same() -> bool:
        last[0] = render(normalised(cluster, namespace, name))
        return last[0] == golden

    try:
        wait_for(same, timeout=60, what=f"{name}'s objects to be those of {path.name}")
    except AssertionError as err:
        diff = "".join(
            difflib.unified_diff(golden.splitlines(True), last[0].splitlines(True), str(path), name)
        )
        raise AssertionError(
            f"{name} is not {path} (UPDATE_GOLDEN=1 rewrites it):\n{diff}"
        ) from err


def pipeline(services: Services, namespace: str) -> None:
    services.start("watcher", "--namespaces", namespace, name="watcher")
    services.start("reconciler", name="reconciler-0")
    services.start("status", name="status-0")


def test_each_option_gives_exactly_the_golden_objects(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    pipeline(service_procs, namespace)
    for case, spec in SPECS.items():
        cluster.apply_memcached(namespace, case, spec)
    for case in SPECS:
        expect_golden(cluster, namespace, case, case, record=UPDATE)
    # The files say what they should: a few facts checked apart from them, so that a wrong
    # file written by UPDATE_GOLDEN cannot pass unnoticed.
    files = {case: json.loads((GOLDEN / f"{case}.json").read_text()) for case in SPECS}
    for case, spec in SPECS.items():
        assert (files[case]["pdb"] is not None) is (spec["size"] >= 2), case
        assert files[case]["service"]["spec"]["clusterIP"] == "None", case
    command = {
        case: files[case]["deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
        for case in SPECS
    }
    assert command["one-pod"][1:7] == ["-m", "64", "-c", "1024", "-I", "1024k"]
    assert command["memory-mb"][2] == "96"
    assert command["memory-limit-only"][2] == "230"  # 256 MiB less 10 % (26 MiB)
    assert command["no-memory-limit"][2] == "64"
    assert command["max-connections"][4] == "4096"
    assert command["max-item-size"][6] == "4096k"
    containers = {
        case: [
            c["name"] for c in files[case]["deployment"]["spec"]["template"]["spec"]["containers"]
        ]
        for case in SPECS
    }
    assert containers["monitoring-on"] == ["memcached", "memcached-exporter"]
    assert all(
        names == ["memcached"] for case, names in containers.items() if case != "monitoring-on"
    )


def test_a_cr_changed_into_each_spec_converges_to_its_golden_objects(
    cluster: Cluster, service_procs: Services, namespace: str
) -> None:
    """One CR stepped through every spec (each step adds, changes or removes fields: a limit
    taken away, monitoring off, the pool below two pods) ends each time with exactly the
    objects a fresh CR of that spec gets (the files, never rewritten here); deleting it then
    collects every one of them."""
    pipeline(service_procs, namespace)
    order = [*SPECS, "one-pod"]
    for case in order:
        cluster.apply_memcached(namespace, "changing", SPECS[case])
        expect_golden(cluster, namespace, "changing", case)
    cluster.apply_memcached(namespace, "changing", SPECS["three-pods"])
    expect_golden(cluster, namespace, "changing", "three-pods")
    cluster.kubectl("delete", "mc", "-n", namespace, "changing")
    wait_for(
        lambda: (
            all(obj is None for obj in live_objects(cluster, namespace, "changing").values())
            and not cluster.kubectl_json(
                "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/instance=changing"
            )["items"]
        ),
        timeout=90,
        what="the garbage collector to remove the Deployment, Service, PDB and pods",
    )
