"""The import layers the folders promise: no service imports another service, and nothing in
shared/ imports a service. Read from the source with ast, so a lazy import inside a function
counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "memcached_operator"
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists())


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _service_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == PACKAGE and len(parts) > 1 and parts[1] in SERVICES:
        return parts[1]
    return None


def test_the_services_are_the_folders_of_services() -> None:
    assert {"watcher", "reconciler", "status"} <= set(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    offending = []
    for path in sorted((ROOT / "services" / service).rglob("*.py")):
        for name in _imports(path):
            other = _service_of(name)
            if other is not None and other != service:
                offending.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offending == []


def test_shared_imports_no_service() -> None:
    offending = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        for name in _imports(path):
            if _service_of(name) is not None or name.split(".")[:2] == [PACKAGE, "cli"]:
                offending.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offending == []


def test_the_package_imports_nothing_from_the_checkout() -> None:
    """The wheel holds services/ and shared/ only: an import of deploy, bench, chaos or tests, or
    of the folders by their directory names, works in a checkout and fails once installed."""
    offending = []
    for folder in ("services", "shared"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in _imports(path):
                if name.split(".")[0] in {
                    "deploy",
                    "bench",
                    "chaos",
                    "tests",
                    "services",
                    "shared",
                }:
                    offending.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offending == []
