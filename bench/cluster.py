"""The benchmark's own local cluster, and counting one client's requests at the API server.

The operator under test (our services, kopf, or the floor client) authenticates as its own user,
``bench-operator``, with a client certificate from the cluster's CA and cluster-admin rights. A
FlowSchema of API Priority and Fairness matches exactly that user, so the API server's own
``apiserver_flowcontrol_dispatched_requests_total{flow_schema="bench-operator"}`` counts every
request the operator makes — one source for all three contenders, and none of the requests of
the harness (the admin user) or of the control plane's own components.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.local import cluster as local_cluster
from deploy.local.layout import Layout, write_kubeconfig
from deploy.local.processes import Supervisor
from memcached_operator.admin import pki

OPERATOR_USER = "bench-operator"
FLOW_SCHEMA = "bench-operator"

_RBAC_AND_APF = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": OPERATOR_USER},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR_USER}
        ],
    },
    {
        # Its own priority level, large enough that no contender is throttled by APF.
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": FLOW_SCHEMA},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 200,
                "limitResponse": {
                    "type": "Queue",
                    "queuing": {"queues": 64, "handSize": 6, "queueLengthLimit": 500},
                },
            },
        },
    },
    {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": FLOW_SCHEMA},
        "spec": {
            "priorityLevelConfiguration": {"name": FLOW_SCHEMA},
            "matchingPrecedence": 100,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [{"kind": "User", "user": {"name": OPERATOR_USER}}],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    },
]


@dataclass
class BenchCluster:
    layout: Layout

    @property
    def admin_kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    def operator_kubeconfig(self, server: str | None = None, *, name: str = "operator") -> Path:
        return write_kubeconfig(
            self.layout,
            self.layout.state_dir / f"{name}.kubeconfig",
            user=OPERATOR_USER,
            server=server,
        )

    def up(self) -> None:
        try:
            local_cluster.up(self.layout)
            pki.ensure(self.layout.state_dir / "pki", clients={OPERATOR_USER: None})
            self.kubectl_apply({"apiVersion": "v1", "kind": "List", "items": _RBAC_AND_APF})
        except BaseException:
            self.down()
            raise

    def down(self) -> list[str]:
        return local_cluster.down(self.layout)

    def pids(self) -> dict[str, int]:
        """The cluster's own processes (etcd, kube-apiserver, ..., nats-server) by name."""
        return {rec.name: rec.pid for rec in Supervisor(self.layout.state_dir).records()}

    def kubectl(self, *args: str, input_: str | None = None) -> str:
        return local_cluster.kubectl(self.layout, *args, input_=input_)

    def kubectl_apply(self, doc: object) -> None:
        self.kubectl("apply", "--server-side", "-f", "-", input_=json.dumps(doc))

    def _ssl(self) -> ssl.SSLContext:
        p = self.layout.pki
        ctx = ssl.create_default_context(cafile=str(p.ca_cert))
        ctx.load_cert_chain(str(p.client_cert("admin")), str(p.client_key("admin")))
        return ctx

    def apiserver_metrics(self) -> str:
        with urllib.request.urlopen(
            f"{self.layout.server}/metrics", timeout=30, context=self._ssl()
        ) as resp:
            text: str = resp.read().decode()
            return text

    def operator_requests(self) -> dict[str, float]:
        """Requests the API server dispatched for the operator user so far, by verb group
        ('total' and one entry per request kind APF distinguishes: mutating or readOnly)."""
        return parse_dispatched(self.apiserver_metrics(), FLOW_SCHEMA)


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_dispatched(text: str, flow_schema: str) -> dict[str, float]:
    """Sum of apiserver_flowcontrol_dispatched_requests_total for one flow schema."""
    out: dict[str, float] = {"total": 0.0}
    for line in text.splitlines():
        if not line.startswith("apiserver_flowcontrol_dispatched_requests_total{"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("flow_schema") != flow_schema:
            continue
        value = float(match["value"])
        out["total"] += value
    return out
