"""The services load kubernetes-asyncio without its generated classes, and lose nothing by it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_services_do_not_import_the_generated_models() -> None:
    out = run(
        "import sys\n"
        "import memcached_operator.watcher.service, memcached_operator.reconciler.service, memcached_operator.status.service\n"
        "print(sorted(m for m in sys.modules if m.startswith('kubernetes_asyncio.client.')))"
    )
    assert "kubernetes_asyncio.client.models" not in out
    assert "kubernetes_asyncio.client.api_client" not in out
    assert "kubernetes_asyncio.client.configuration" in out


def test_the_full_client_is_still_there_for_whoever_asks() -> None:
    out = run(
        "import memcached_operator.shared.kube.client\n"
        "from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api, V1Pod\n"
        "import kubernetes_asyncio\n"
        "import asyncio\n"
        "async def make():\n"
        "    client = ApiClient(Configuration())\n"
        "    await client.close()\n"
        "    return client\n"
        "client = asyncio.run(make())\n"
        "print(type(client).__module__, V1Pod.__name__, CoreV1Api.__name__,"
        " kubernetes_asyncio.watch.__name__)"
    )
    assert out == "kubernetes_asyncio.client.api_client V1Pod CoreV1Api kubernetes_asyncio.watch"
