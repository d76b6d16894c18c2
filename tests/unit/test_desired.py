"""Unit tests of the desired Deployment: labels, ownership, and change detection.

matches() decides whether the reconciler writes, so it must see through what the API server
adds to a Deployment and still notice every edit a user or the CR could cause.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from memcached_operator.reconciler.desired import cache_memory_mb, desired_deployment, matches
from memcached_operator.shared.api.contract import label_value, owned_by
from memcached_operator.shared.api.models import Memcached

UID = "6c3a1f0e-8b1d-4c1e-9d2a-1f2e3d4c5b6a"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def memcached(
    name: str = "cache", spec: dict[str, Any] | None = None, uid: str | None = UID
) -> Memcached:
    metadata: dict[str, Any] = {"name": name, "namespace": "team-a", "generation": 1}
    if uid is not None:
        metadata["uid"] = uid
    return Memcached.from_api(
        {
            "apiVersion": "cache.example.com/v1",
            "kind": "Memcached",
            "metadata": metadata,
            "spec": {"size": 3} if spec is None else spec,
        }
    )


WITH_RESOURCES = {
    "size": 2,
    "resources": {
        "requests": {"cpu": "100m", "memory": 67108864},
        "limits": {"cpu": 1, "memory": "128Mi"},
    },
}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def as_served(desired: dict[str, Any]) -> dict[str, Any]:
    """The Deployment as the API server returns it after applying ``desired``."""
    live = copy.deepcopy(desired)
    live["metadata"].update(
        {
            "uid": "0f0e0d0c-0000-4000-8000-000000000001",
            "resourceVersion": "1234",
            "generation": 1,
            "creationTimestamp": "2025-03-01T10:00:00Z",
            "annotations": {
                **desired["metadata"].get("annotations", {}),
                "deployment.kubernetes.io/revision": "1",
            },
            "managedFields": [{"manager": "memcached-operator", "operation": "Apply"}],
        }
    )
    live["metadata"]["labels"]["team"] = "a"
    spec = live["spec"]
    spec.update({"revisionHistoryLimit": 10, "progressDeadlineSeconds": 600})
    spec["template"]["metadata"]["creationTimestamp"] = None
    pod = spec["template"]["spec"]
    pod.update(
        {
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
        }
    )
    served = container(live)
    served.update(
        {
            "imagePullPolicy": "IfNotPresent",
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
        }
    )
    # The API server writes quantities in canonical form.
    canonical = {"100m": "100m", 67108864: "64Mi", 1: "1", "128Mi": "128Mi"}
    for key in ("limits", "requests"):
        values = served["resources"].get(key, {})
        for name, value in values.items():
            values[name] = canonical[value]
    live["status"] = {"replicas": 3, "readyReplicas": 3, "observedGeneration": 1}
    return live


@pytest.mark.unit
def test_deployment_shape() -> None:
    desired = desired_deployment(memcached(spec={"size": 3, "image": "memcached:1.6.39"}))
    assert desired["apiVersion"] == "apps/v1"
    assert desired["kind"] == "Deployment"
    assert desired["metadata"]["name"] == "cache"
    assert desired["metadata"]["namespace"] == "team-a"
    assert desired["spec"]["replicas"] == 3
    served = container(desired)
    assert served["name"] == "memcached"
    assert served["image"] == "memcached:1.6.39"
    assert served["command"] == [
        "memcached",
        "-m",
        "64",
        "-c",
        "1024",
        "-I",
        "1024k",
        "-o",
        "modern",
        "-v",
    ]
    assert served["ports"] == [{"name": "memcached", "containerPort": 11211, "protocol": "TCP"}]
    assert served["resources"] == {}
    assert "status" not in desired


@pytest.mark.unit
def test_pods_meet_pod_security_restricted() -> None:
    pod = desired_deployment(memcached())["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 11211
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for served in pod["containers"]:
        context = served["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0


def memory_limit(value: int | str, **spec: Any) -> dict[str, Any]:
    return {"resources": {"limits": {"memory": value}}, **spec}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec", "mb"),
    [
        ({}, 64),
        # Requests alone say nothing of what the pod may use.
        ({"resources": {"requests": {"memory": "1Gi"}}}, 64),
        # 10 % overhead, at least 16 MiB.
        (memory_limit("1Gi"), 1024 - 103),
        (memory_limit("128Mi"), 128 - 16),
        (memory_limit("160Mi"), 160 - 16),
        (memory_limit("170Mi"), 170 - 17),
        (memory_limit(1000 * 1000 * 1000), 953 - 96),
        # A fraction of a MiB does not count.
        (memory_limit("1.5Mi", maxItemSize=512 * 1024), 1),
        # Too little for memcached to start: raised to twice the item size.
        (memory_limit("16Mi"), 2),
        (memory_limit("16Mi", maxItemSize=3 << 19), 3),
        ({"maxItemSize": 64 << 20}, 128),
        # A limit of exabytes is capped, not passed on.
        (memory_limit("7Ei"), 1 << 20),
        # memoryMB wins, at most the limit.
        ({"memoryMB": 100}, 100),
        (memory_limit("128Mi", memoryMB=128), 128),
        (memory_limit("1Gi", memoryMB=2), 2),
    ],
)
def test_cache_memory_comes_from_the_limit_or_memory_mb(spec: dict[str, Any], mb: int) -> None:
    parsed = memcached(spec={"size": 1, **spec})
    assert cache_memory_mb(parsed.spec) == mb
    command = container(desired_deployment(parsed))["command"]
    assert command[command.index("-m") + 1] == str(mb)


@pytest.mark.unit
def test_connections_and_item_size_come_from_the_spec() -> None:
    spec = {"size": 1, "maxConnections": 4096, "maxItemSize": 5 << 19, "memoryMB": 512}
    command = container(desired_deployment(memcached(spec=spec)))["command"]
    assert command == [
        "memcached",
        "-m",
        "512",
        "-c",
        "4096",
        "-I",
        "2560k",
        "-o",
        "modern",
        "-v",
    ]


@pytest.mark.unit
def test_rollouts_take_one_pod_at_a_time_and_pods_spread_over_nodes() -> None:
    desired = desired_deployment(memcached())
    assert desired["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    (spread,) = desired["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"] == {"matchLabels": desired["spec"]["selector"]["matchLabels"]}


@pytest.mark.unit
def test_labels_and_selector() -> None:
    desired = desired_deployment(memcached())
    expected = {
        "app.kubernetes.io/name": "memcached",
        "app.kubernetes.io/instance": "cache",
        "app.kubernetes.io/managed-by": "memcached-operator",
    }
    assert desired["metadata"]["labels"] == expected
    assert desired["spec"]["selector"] == {"matchLabels": expected}
    assert desired["spec"]["template"]["metadata"]["labels"] == expected


@pytest.mark.unit
def test_resources_come_from_spec() -> None:
    desired = desired_deployment(memcached(spec=WITH_RESOURCES))
    assert container(desired)["resources"] == WITH_RESOURCES["resources"]
    assert desired["spec"]["replicas"] == 2


@pytest.mark.unit
def test_size_zero_is_kept() -> None:
    assert desired_deployment(memcached(spec={"size": 0}))["spec"]["replicas"] == 0


@pytest.mark.unit
def test_owner_reference() -> None:
    references = desired_deployment(memcached())["metadata"]["ownerReferences"]
    assert references == [
        {
            "apiVersion": "cache.example.com/v1",
            "kind": "Memcached",
            "name": "cache",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


@pytest.mark.unit
def test_uid_argument_and_missing_uid() -> None:
    desired = desired_deployment(memcached(uid=None), cr_uid="explicit-uid")
    assert desired["metadata"]["ownerReferences"][0]["uid"] == "explicit-uid"
    with pytest.raises(ValueError, match="uid"):
        desired_deployment(memcached(uid=None))


@pytest.mark.unit
def test_names_up_to_63_characters_are_their_own_label() -> None:
    name = "a" * 62 + "z"
    desired = desired_deployment(memcached(name=name))
    assert desired["metadata"]["labels"]["app.kubernetes.io/instance"] == name
    assert desired["metadata"]["name"] == name


@pytest.mark.unit
@pytest.mark.parametrize(
    "name",
    [
        "a" * 64,
        "a" * 253,
        "x" * 53 + "-" + "y" * 20,  # the cut falls right after a dash
        "x" * 53 + "." + "y" * 20,
        "team.cache." + "long-name-" * 10 + "end",
    ],
)
def test_long_names_give_valid_stable_labels(name: str) -> None:
    value = desired_deployment(memcached(name=name))["metadata"]["labels"][
        "app.kubernetes.io/instance"
    ]
    assert len(value) <= 63
    assert LABEL_VALUE.match(value), value
    assert value == label_value(name)
    assert value.startswith(name[:40])


@pytest.mark.unit
def test_long_names_sharing_a_prefix_get_distinct_labels() -> None:
    prefix = "memcached-for-the-team-that-runs-the-search-frontend-in-production"
    names = [f"{prefix}-{suffix}" for suffix in ("a", "b", "blue", "green")]
    values = {label_value(name) for name in names}
    assert len(values) == len(names)


@pytest.mark.unit
def test_label_value_is_valid_for_awkward_text() -> None:
    for text in ("-" * 80, "_leading" + "x" * 70, "ünïcode" * 10, "ok_but.long" * 10):
        value = label_value(text)
        assert len(value) <= 63 and LABEL_VALUE.match(value), (text, value)


@pytest.mark.unit
@pytest.mark.parametrize("spec", [{"size": 3}, WITH_RESOURCES])
def test_matches_live_object_with_server_defaults(spec: dict[str, Any]) -> None:
    desired = desired_deployment(memcached(spec=spec))
    assert matches(as_served(desired), desired)


@pytest.mark.unit
def test_matches_ignores_protocol_default_and_sidecars() -> None:
    desired = desired_deployment(memcached())
    live = as_served(desired)
    del container(desired)["ports"][0]["protocol"]
    live["spec"]["template"]["spec"]["containers"].append({"name": "mesh-proxy", "image": "p"})
    assert matches(live, desired)


def edit_replicas(live: dict[str, Any]) -> None:
    live["spec"]["replicas"] = 5


def edit_image(live: dict[str, Any]) -> None:
    container(live)["image"] = "memcached:latest"


def edit_command(live: dict[str, Any]) -> None:
    container(live)["command"] = ["memcached", "-m=1024"]


def edit_port(live: dict[str, Any]) -> None:
    container(live)["ports"][0]["containerPort"] = 11212


def edit_memory_limit(live: dict[str, Any]) -> None:
    container(live)["resources"]["limits"]["memory"] = "256Mi"


def add_limit(live: dict[str, Any]) -> None:
    container(live)["resources"]["limits"]["ephemeral-storage"] = "1Gi"


def drop_requests(live: dict[str, Any]) -> None:
    del container(live)["resources"]["requests"]


def drop_label(live: dict[str, Any]) -> None:
    del live["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"]


def drop_owner(live: dict[str, Any]) -> None:
    live["metadata"]["ownerReferences"] = []


def rename_container(live: dict[str, Any]) -> None:
    container(live)["name"] = "cache"


def allow_escalation(live: dict[str, Any]) -> None:
    container(live)["securityContext"]["allowPrivilegeEscalation"] = True


def run_as_root(live: dict[str, Any]) -> None:
    live["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0


def mount_token(live: dict[str, Any]) -> None:
    live["spec"]["template"]["spec"]["automountServiceAccountToken"] = True


def surge(live: dict[str, Any]) -> None:
    live["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = "25%"


def drop_spread(live: dict[str, Any]) -> None:
    del live["spec"]["template"]["spec"]["topologySpreadConstraints"]


@pytest.mark.unit
@pytest.mark.parametrize(
    "edit",
    [
        edit_replicas,
        edit_image,
        edit_command,
        edit_port,
        edit_memory_limit,
        add_limit,
        drop_requests,
        drop_label,
        drop_owner,
        rename_container,
        allow_escalation,
        run_as_root,
        mount_token,
        surge,
        drop_spread,
    ],
)
def test_edits_of_owned_fields_do_not_match(edit: Any) -> None:
    desired = desired_deployment(memcached(spec=WITH_RESOURCES))
    live = as_served(desired)
    edit(live)
    assert not matches(live, desired)


@pytest.mark.unit
def test_changed_cr_does_not_match_old_deployment() -> None:
    live = as_served(desired_deployment(memcached(spec=WITH_RESOURCES)))
    for spec in (
        {**WITH_RESOURCES, "size": 4},
        {**WITH_RESOURCES, "image": "memcached:1.6.39-alpine"},
        {"size": 2},  # resources removed from the CR must be removed from the Deployment
    ):
        assert not matches(live, desired_deployment(memcached(spec=spec))), spec


@pytest.mark.unit
def test_resources_added_to_cr_do_not_match() -> None:
    live = as_served(desired_deployment(memcached(spec={"size": 2})))
    assert not matches(live, desired_deployment(memcached(spec=WITH_RESOURCES)))


@pytest.mark.unit
def test_owned_by() -> None:
    live = as_served(desired_deployment(memcached()))
    assert owned_by(live, UID)
    assert not owned_by(live, "another-uid")
    live["metadata"]["ownerReferences"][0]["controller"] = False
    assert not owned_by(live, UID)
    del live["metadata"]["ownerReferences"]
    assert not owned_by(live, UID)


@pytest.mark.unit
def test_owned_by_with_other_non_controller_owners() -> None:
    live = as_served(desired_deployment(memcached()))
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "other"}
    live["metadata"]["ownerReferences"].insert(0, other)
    assert owned_by(live, UID)
    assert not owned_by(live, "other")


MONITORED = {"size": 2, "monitoring": {"enabled": True}}


@pytest.mark.unit
def test_monitoring_adds_a_restricted_bounded_exporter_and_scrape_annotations() -> None:
    desired = desired_deployment(memcached(spec=MONITORED))
    template = desired["spec"]["template"]
    exporter = template["spec"]["containers"][1]
    assert exporter["name"] == "memcached-exporter"
    assert exporter["ports"] == [{"name": "metrics", "containerPort": 9150, "protocol": "TCP"}]
    assert exporter["args"] == ["--memcached.address=localhost:11211"]
    assert exporter["resources"]["limits"] == {"cpu": "100m", "memory": "32Mi"}
    assert exporter["securityContext"]["allowPrivilegeEscalation"] is False
    assert exporter["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert exporter["securityContext"]["readOnlyRootFilesystem"] is True
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9150"
    assert matches(copy.deepcopy(desired), desired)


@pytest.mark.unit
@pytest.mark.parametrize("off", [{"size": 2}, {"size": 2, "monitoring": {"enabled": False}}])
def test_turning_monitoring_off_does_not_match_the_monitored_deployment(
    off: dict[str, Any],
) -> None:
    live = copy.deepcopy(desired_deployment(memcached(spec=MONITORED)))
    assert not matches(live, desired_deployment(memcached(spec=off)))
    # An exporter someone else's sidecar injection added under another name is no difference.
    unmonitored = desired_deployment(memcached(spec=off))
    live = copy.deepcopy(unmonitored)
    live["spec"]["template"]["spec"]["containers"].append({"name": "istio-proxy"})
    assert matches(live, unmonitored)
