"""Unit tests that keep the Dockerfile and the deploy/ manifests consistent with the code.

The image must start the console script pyproject declares, on a Python the project
supports, as the non-root user the manifests expect; each Deployment must run a subcommand
that exists, probe the port its service listens on by default, and connect to NATS as a user
that deploy/local/nats_auth.py defines; and the committed auth.conf must be that module's
output (it cannot be built here, so these are checked as text).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.local import nats_auth
from shared import cli

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BASE = ROOT / "deploy" / "base"
SERVICE_FILES = ("watcher.yaml", "reconciler.yaml", "status.yaml")
# The services' default health ports (runtime.add_common_arguments in each service module).
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
    committed = (ROOT / nats_auth.AUTH_CONF_PATH).read_text()
    assert committed == nats_auth.authorization_block(), (
        f"{nats_auth.AUTH_CONF_PATH} is out of date with deploy/local/nats_auth.py; "
        f"regenerate it with `{nats_auth.REGENERATE}` and commit the result"
    )


def test_entrypoint_is_the_console_script() -> None:
    scripts = pyproject()["project"]["scripts"]
    assert exec_form("ENTRYPOINT") == [next(iter(scripts))]
    assert list(scripts) == ["memcached-operator"]


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
        assert env["STREAM_REPLICAS"]["value"] == "3"
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["OTEL_PROPAGATORS"]["value"] == "tracecontext,baggage,b3multi"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_generated_passwords_read_as_strings_in_nats_config() -> None:
    """nats-server parses an environment variable like a config value: a password of digits
    would become a number and fail the server's start."""
    for _ in range(50):
        password = nats_auth.generate_password()
        assert password[0].isalpha() and password.isalnum()


def test_every_user_has_a_password_variable_and_service_users_exist() -> None:
    names = [u.name for u in nats_auth.USERS]
    assert len(set(names)) == len(names)
    assert set(nats_auth.SERVICE_USERS) <= set(names)
    assert {"audit", "admin"} <= set(names)
    block = nats_auth.authorization_block()
    for user in nats_auth.USERS:
        assert f"password: ${user.password_variable}\n" in block
