"""The optional TLS of the NATS client port (deploy/components/nats-tls), built on the base:
the servers take TLS only with the certificate of Secret nats-tls, every client of NATS (the
three Deployments and the streams Job) verifies them with the CA of Secret nats-ca, and the
API server accepts the result in a server-side dry run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cluster

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_tls_component_makes_every_nats_client_verify_the_servers(
    cluster: Cluster, tmp_path: Path
) -> None:
    overlay = tmp_path / "tls"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # Kustomize takes bases by relative path only.
                "resources": [os.path.relpath(DEPLOY / "base", overlay)],
                "components": [os.path.relpath(DEPLOY / "components" / "nats-tls", overlay)],
            }
        )
    )
    docs: list[dict[str, Any]] = [
        d for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(overlay)).stdout) if d
    ]
    (nats,) = [d for d in docs if d["kind"] == "StatefulSet"]
    server = nats["spec"]["template"]["spec"]
    assert {"--tls", "--tlscert=/etc/nats-tls/tls.crt", "--tlskey=/etc/nats-tls/tls.key"} <= set(
        server["containers"][0]["args"]
    )
    assert {"name": "tls", "secret": {"secretName": "nats-tls"}} in server["volumes"]
    clients = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert sorted(d["metadata"]["name"] for d in clients) == [
        "nats-streams",
        "reconciler",
        "status",
        "watcher",
    ]
    for doc in clients:
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NATS_CA"] == "/etc/nats-ca/ca.crt", doc["metadata"]["name"]
        assert {"name": "nats-ca", "secret": {"secretName": "nats-ca"}} in pod["volumes"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["nats-ca"] == "/etc/nats-ca"
    cluster.kubectl("create", "namespace", "memcached-operator", check=False)
    proc = cluster.kubectl(
        "apply", "--dry-run=server", "-k", str(overlay), check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "PodSecurity" not in proc.stderr, proc.stderr
