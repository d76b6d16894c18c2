"""`memcached-operator nats-credentials`: the NATS Secrets for one cluster, freshly generated.

Prints (YAML, for `kubectl apply -f -`) the Secret ``nats-users`` with a fresh random password
per NATS user (what each service and the streams Job connect with, one key per user) and the
Secret ``nats-server-auth`` with only the bcrypt hashes of those passwords, as the variables the
server's auth.conf reads (services/admin/nats_auth.py): the NATS pods never hold a password.
With ``--tls`` it also prints ``nats-tls`` (the servers' certificate and key, valid for the
in-cluster names of the NATS Service) and ``nats-ca`` (the CA certificate the clients verify
the servers with), issued by a CA made with services/admin/pki.py; the CA's key is discarded
unless ``--pki-dir`` keeps it for issuing again.

No overlay of deploy/ carries a password (a test checks): run this once per cluster and keep
its output out of version control.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from memcached_operator.admin import nats_auth, nats_conf, pki

USERS_SECRET = "nats-users"
SERVER_SECRET = "nats-server-auth"
TLS_SECRET = "nats-tls"
CA_SECRET = "nats-ca"
NAMESPACE = "memcached-operator"


def server_names(namespace: str) -> list[str]:
    """The names clients and routes reach the NATS servers by (Service and StatefulSet)."""
    names = []
    for service in ("nats", "nats-headless"):
        for suffix in ("", f".{namespace}", f".{namespace}.svc", f".{namespace}.svc.cluster.local"):
            names.append(f"{service}{suffix}")
    names += [
        f"*.nats-headless{s}" for s in ("", f".{namespace}.svc", f".{namespace}.svc.cluster.local")
    ]
    return names


def _secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "memcached-operator"},
        },
        "type": "Opaque",
        "stringData": data,
    }


def secrets(
    *, namespace: str = NAMESPACE, tls_dir: Path | None = None, cost: int = nats_conf.BCRYPT_COST
) -> list[dict[str, Any]]:
    """The Secrets' manifests; with ``tls_dir``, also the TLS ones from the PKI there."""
    passwords = {u.name: nats_conf.generate_password() for u in nats_auth.USERS}
    docs = [
        _secret(USERS_SECRET, namespace, passwords),
        _secret(SERVER_SECRET, namespace, nats_conf.server_environment(passwords, cost=cost)),
    ]
    if tls_dir is not None:
        p = pki.ensure(tls_dir, clients={}, servers={"nats": server_names(namespace)})
        docs.append(
            _secret(
                TLS_SECRET,
                namespace,
                {
                    "tls.crt": p.server_cert("nats").read_text(),
                    "tls.key": p.server_key("nats").read_text(),
                    "ca.crt": p.ca_cert.read_text(),
                },
            )
        )
        docs.append(_secret(CA_SECRET, namespace, {"ca.crt": p.ca_cert.read_text()}))
    return docs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", default=NAMESPACE, help="the operator's namespace")
    parser.add_argument(
        "--tls", action="store_true", help="also the servers' certificate and the clients' CA"
    )
    parser.add_argument(
        "--pki-dir",
        type=Path,
        help="with --tls: keep the CA (and its key) here, reusing one that is there",
    )


def run(args: argparse.Namespace) -> int:
    if args.tls and args.pki_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            docs = secrets(namespace=args.namespace, tls_dir=Path(tmp))
    else:
        docs = secrets(namespace=args.namespace, tls_dir=args.pki_dir if args.tls else None)
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0
