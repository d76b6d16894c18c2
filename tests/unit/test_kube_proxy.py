"""The API client resolves its proxy from the environment once, as aiohttp would per request."""

from __future__ import annotations

import pytest

from memcached_operator.shared.kube.client import _environment_proxy

pytestmark = pytest.mark.unit


def test_no_proxy_variables_mean_a_direct_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _environment_proxy("https://10.0.0.1:6443") is None


def test_https_proxy_is_used_unless_no_proxy_names_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("https_proxy", "HTTP_PROXY", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "kubernetes.default.svc,.cluster.local")
    assert _environment_proxy("https://10.0.0.1:6443") == "http://proxy.example:3128"
    assert _environment_proxy("https://kubernetes.default.svc:443") is None
