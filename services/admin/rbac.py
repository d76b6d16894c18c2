"""`memcached-operator rbac --namespaces a,b`: namespaced Roles for an operator that watches a
fixed set of namespaces.

deploy/base grants each service a ClusterRole, which it needs when it watches every namespace.
An operator started with ``WATCH_NAMESPACES`` makes only namespaced calls, so it can run on
Roles instead: this prints (YAML, for ``kubectl apply -f -``) one Role per service and watched
namespace, with exactly the rules of that service's ClusterRole in deploy/base (one source: the
rules are read from there), and a RoleBinding of it to the service's ServiceAccount. The
component ``deploy/components/namespaced-rbac`` removes the ClusterRoles and their bindings
from an overlay that uses these instead.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml


def _base() -> Traversable:
    """deploy/base: the package data memcached_operator.manifests in an installed wheel; in an
    editable install from a checkout (whose finder maps no data-only package) the folder itself."""
    try:
        return resources.files("memcached_operator.manifests")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "deploy" / "base"


BASE = _base()
SERVICES = ("watcher", "reconciler", "status")
OPERATOR_NAMESPACE = "memcached-operator"


def cluster_roles() -> dict[str, dict[str, Any]]:
    """Each service's ClusterRole as deploy/base defines it."""
    roles: dict[str, dict[str, Any]] = {}
    for service in SERVICES:
        for doc in yaml.safe_load_all((BASE / f"{service}.yaml").read_text()):
            if doc and doc.get("kind") == "ClusterRole":
                roles[service] = doc
    return roles


def namespaced_roles(
    namespaces: list[str], *, operator_namespace: str = OPERATOR_NAMESPACE
) -> list[dict[str, Any]]:
    """A Role and a RoleBinding per service and namespace, with the ClusterRoles' rules."""
    docs: list[dict[str, Any]] = []
    for service, cluster_role in cluster_roles().items():
        name = cluster_role["metadata"]["name"]
        labels = cluster_role["metadata"].get("labels") or {}
        for namespace in namespaces:
            meta = {"name": name, "namespace": namespace, "labels": labels}
            docs.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "Role",
                    "metadata": meta,
                    "rules": cluster_role["rules"],
                }
            )
            docs.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": meta,
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": name,
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": service, "namespace": operator_namespace}
                    ],
                }
            )
    return docs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespaces",
        required=True,
        help="comma-separated namespaces the operator watches (its WATCH_NAMESPACES)",
    )
    parser.add_argument(
        "--operator-namespace",
        default=OPERATOR_NAMESPACE,
        help="the namespace of the services' ServiceAccounts",
    )


def run(args: argparse.Namespace) -> int:
    namespaces = [n.strip() for n in args.namespaces.split(",") if n.strip()]
    if not namespaces:
        print("rbac: --namespaces names no namespace", file=sys.stderr)
        return 2
    docs = namespaced_roles(namespaces, operator_namespace=args.operator_namespace)
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0
