"""Unit tests that keep the Dockerfile and the deploy/ manifests consistent with the code.

The image must start the console script pyproject declares, on a Python the project
supports, as the non-root user the manifests expect; each Deployment must run a subcommand
that exists, probe the port its service listens on by default, and connect to NATS as a user
that services/admin/nats_auth.py defines; the committed auth.conf must be that module's
output (it cannot be built here, so these are checked as text); no overlay may carry a
password, and no service may be told how to shape the streams (the Job nats-streams does).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from memcached_operator import cli
from memcached_operator.admin import nats_auth, nats_conf

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BASE = ROOT / "deploy" / "base"
SERVICE_FILES = ("watcher.yaml", "reconciler.yaml", "status.yaml")
# The services' default health ports (health_port in each service's settings.py).
HEALTH_PORTS = {"watcher": 8081, "reconciler": 8082, "status": 8083}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def exec_form(keyword: str) -> list[str]:
    (value,) = [rest for kw, rest in instructions() if kw == keyword]
    parsed: list[str] = json.loads(value)
    return parsed


def deployments() -> dict[str, dict[str, Any]]:
    out = {}
    for name in SERVICE_FILES:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            if doc and doc["kind"] == "Deployment":
                out[doc["metadata"]["name"]] = doc
    return out


def test_committed_auth_conf_is_current() -> None:
    committed = (ROOT / nats_conf.AUTH_CONF_PATH).read_text()
    assert committed == nats_conf.authorization_block(), (
        f"{nats_conf.AUTH_CONF_PATH} is out of date with services/admin/nats_auth.py; "
        f"regenerate it with `{nats_conf.REGENERATE}` and commit the result"
    )


def test_entrypoint_is_the_console_script() -> None:
    scripts = pyproject()["project"]["scripts"]
    assert exec_form("ENTRYPOINT") == [next(iter(scripts))]
    # The image runs the operator; `kubectl-memcached` is the kubectl plugin for people.
    assert list(scripts) == ["memcached-operator", "kubectl-memcached"]


def test_default_command_is_a_subcommand() -> None:
    command = exec_form("CMD")
    assert command and command[0] in cli.SUBCOMMANDS


def test_image_python_is_one_the_project_supports() -> None:
    (arg,) = [rest for kw, rest in instructions() if kw == "ARG" and "PYTHON_VERSION" in rest]
    version = tuple(int(p) for p in arg.split("=", 1)[1].split("."))
    minimum = pyproject()["project"]["requires-python"].removeprefix(">=")
    assert version >= tuple(int(p) for p in minimum.split("."))
    froms = [rest for kw, rest in instructions() if kw == "FROM"]
    assert froms and all(f.startswith("python:${PYTHON_VERSION}-slim") for f in froms)


def test_image_runs_as_the_non_root_user_of_the_manifests() -> None:
    (user,) = [rest for kw, rest in instructions() if kw == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0
    for name, deployment in deployments().items():
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid)), name


def test_image_exposes_the_health_ports() -> None:
    (exposed,) = [rest for kw, rest in instructions() if kw == "EXPOSE"]
    assert {int(p) for p in exposed.split()} == set(HEALTH_PORTS.values())


def test_every_deployment_runs_a_subcommand_with_its_probes_and_user() -> None:
    found = deployments()
    assert set(found) == set(HEALTH_PORTS)
    replicas = {"watcher": 2, "reconciler": 3, "status": 2}
    users = {u.name for u in nats_auth.USERS}
    for name, deployment in found.items():
        assert deployment["spec"]["replicas"] == replicas[name]
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["args"][0] in cli.SUBCOMMANDS
        assert container["args"] == [name]
        port = HEALTH_PORTS[name]
        assert [p["containerPort"] for p in container["ports"]] == [port]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        env = {e["name"]: e for e in container["env"]}
        assert env["HEALTH_PORT"]["value"] == str(port)
        assert env["NATS_USER"]["value"] == name and name in users
        ref = env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("nats-users", name)
        # Stream settings belong to the admin step (Job nats-streams), not to a service.
        assert not {"STREAM_REPLICAS", "EVENTS_MAX_AGE", "EVENTS_PER_OBJECT"} & set(env), name
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["OTEL_PROPAGATORS"]["value"] == "tracecontext,baggage,b3multi"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["requests"] and container["resources"]["limits"]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_no_kustomization_or_manifest_carries_a_password() -> None:
    """A password in an overlay ends up in every cluster built from it: the Secrets come from
    `memcached-operator nats-credentials` only."""
    found = []
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        for doc in documents(path):
            for generator in doc.get("secretGenerator") or []:
                found.append(f"{path}: secretGenerator {generator.get('name')}")
            if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
                found.append(f"{path}: Secret {doc['metadata']['name']}")
            for node in _walk(doc):
                if "PASSWORD" in str(node.get("name", "")).upper() and "value" in node:
                    found.append(f"{path}: {node['name']} has a literal value")
        if re.search(r"\bdev(watcher|reconciler|status|audit|admin)\b", path.read_text()):
            found.append(f"{path}: a development password")
    for path in sorted((ROOT / "deploy").rglob("*.conf")):
        for line in path.read_text().splitlines():
            if re.match(r"\s*password\s*[:=]", line) and not re.search(r"[:=]\s*\$\w", line):
                found.append(f"{path}: {line.strip()}")
    assert not found, found


def test_the_job_creates_the_streams_as_admin_and_services_cannot() -> None:
    (job,) = documents(BASE / "nats-streams.yaml")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["streams", "ensure"]
    assert "streams" in cli.SUBCOMMANDS
    env = {e["name"]: e for e in container["env"]}
    assert env["NATS_USER"]["value"] == "admin"
    assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "nats-users",
        "key": "admin",
    }
    assert env["STREAM_REPLICAS"]["value"] == "3"
    assert nats_auth.user("admin").permissions is None
    for name in nats_auth.SERVICE_USERS:
        for verb in ("CREATE", "UPDATE", "DELETE", "PURGE"):
            for stream in nats_auth.STREAMS:
                subject = f"$JS.API.STREAM.{verb}.{stream}"
                assert not nats_auth.allowed(nats_auth.user(name), "pub", subject), (name, subject)


def test_nats_servers_read_only_password_hashes() -> None:
    """The StatefulSet's password variables come from the hashes' Secret, never nats-users."""
    (statefulset,) = [d for d in documents(BASE / "nats.yaml") if d["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {
        u.password_variable: {"name": "nats-server-auth", "key": u.password_variable}
        for u in nats_auth.USERS
    }


def test_monitoring_port_is_closed_to_other_pods() -> None:
    (policy,) = [d for d in documents(BASE / "nats.yaml") if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert "monitor" not in ports and 8222 not in ports
    assert sorted(ports) == ["client", "cluster"]


def test_generated_passwords_read_as_strings_in_nats_config() -> None:
    """nats-server parses an environment variable like a config value: a password of digits
    would become a number and fail the server's start."""
    for _ in range(50):
        password = nats_conf.generate_password()
        assert password[0].isalpha() and password.isalnum()


def test_every_user_has_a_password_variable_and_service_users_exist() -> None:
    names = [u.name for u in nats_auth.USERS]
    assert len(set(names)) == len(names)
    assert set(nats_auth.SERVICE_USERS) <= set(names)
    assert {"audit", "admin"} <= set(names)
    block = nats_conf.authorization_block()
    for user in nats_auth.USERS:
        assert f"password: ${user.password_variable}\n" in block
