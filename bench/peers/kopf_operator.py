"""The same Memcached operator written the ordinary kopf way, for the benchmark.

Run with ``kopf run --standalone --namespace NS bench/peers/kopf_operator.py``. On create,
resume or spec update of a Memcached it builds the same objects as our reconciler (the
Deployment, the headless Service, and the PodDisruptionBudget when size >= 2: the functions
of ``desired.py`` and ``companions.py``) and, for each, reads the live one and applies it with
server-side apply unless it already matches (a PodDisruptionBudget the CR no longer wants is
deleted); on every change of a managed Deployment or pod it folds the same status
(``fold_status``) and writes it when it changed. Deployments, pods and CRs are kept in kopf
indexes, as the kopf documentation suggests, so a status refresh reads nothing from the API.

Settings left at kopf's defaults except for where kopf keeps its own state: annotations
instead of ``status.kopf``, which the CRD's structural schema would prune.
BENCH_METRICS_PORT, when set, serves a Prometheus counter of handler runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from typing import Any

import kopf
from prometheus_client import Counter, start_http_server

from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api.contract import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    OWNER_ANNOTATION,
    owned_by,
)
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.events.outcomes import Outcome
from memcached_operator.shared.kube.client import (
    DEPLOYMENT,
    MEMCACHED,
    PDB,
    SERVICE,
    KubeClient,
)
from memcached_operator.status.conditions import fold_status, ready_nodes, status_changed

GROUP, VERSION, PLURAL = "cache.example.com", "v1", "memcacheds"
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
RECONCILES = Counter("bench_kopf_reconcile_total", "Memcached handler runs", ["handler"])

_kube: KubeClient | None = None
_outcomes: dict[tuple[str, str], Outcome] = {}
_written: dict[tuple[str, str], dict[str, Any]] = {}
_locks: dict[tuple[str, str], asyncio.Lock] = {}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _kube
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage()
    _kube = await KubeClient.connect()
    if os.environ.get("BENCH_METRICS_PORT"):
        start_http_server(int(os.environ["BENCH_METRICS_PORT"]), addr="127.0.0.1")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _kube is not None:
        await _kube.close()


@kopf.index(GROUP, VERSION, PLURAL)
def memcacheds(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): dict(body)}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def deployments(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): dict(body)}


@kopf.index("", "v1", "pods", labels=MANAGED)
def pods(namespace: str, annotations: kopf.Annotations, body: kopf.Body, **_: Any) -> Any:
    owner = annotations.get(OWNER_ANNOTATION)
    return {(namespace, owner): dict(body)} if owner else None


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    body: kopf.Body,
    namespace: str,
    name: str,
    memcacheds: kopf.Index[Any, Any],
    deployments: kopf.Index[Any, Any],
    pods: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    assert _kube is not None
    RECONCILES.labels("reconcile").inc()
    cr = Memcached.from_api(dict(body))
    for resource, desired in (
        (DEPLOYMENT, desired_deployment(cr)),
        (SERVICE, desired_service(cr)),
        (PDB, desired_pdb(cr)),
    ):
        live = await _kube.get(resource, namespace, name)
        if desired is None:
            if live is not None and owned_by(live, cr.uid or ""):
                await _kube.delete(resource, namespace, name, uid=live["metadata"]["uid"])
        elif live is None or not matches(live, desired):
            await _kube.apply(resource, desired, field_manager="kopf-memcached")
    meta = body["metadata"]
    _outcomes[(namespace, name)] = Outcome(
        key=f"{namespace}/{name}",
        uid=meta["uid"],
        generation=int(meta.get("generation") or 0),
        result="success",
        time=dt.datetime.now(dt.UTC),
    )
    await _refresh((namespace, name), memcacheds, deployments, pods)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def owned_changed(
    namespace: str,
    annotations: kopf.Annotations,
    memcacheds: kopf.Index[Any, Any],
    deployments: kopf.Index[Any, Any],
    pods: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """A Deployment or pod of a Memcached changed: refresh its owner's status."""
    owner = annotations.get(OWNER_ANNOTATION)
    if owner:
        await _refresh((namespace, owner), memcacheds, deployments, pods)


def _one(index: kopf.Index[Any, Any], key: Any) -> Any:
    for value in index.get(key, ()):
        return value
    return None


async def _refresh(
    key: tuple[str, str],
    memcacheds: kopf.Index[Any, Any],
    deployments: kopf.Index[Any, Any],
    pods: kopf.Index[Any, Any],
) -> None:
    assert _kube is not None
    async with _locks.setdefault(key, asyncio.Lock()):
        cr = _one(memcacheds, key)
        if cr is None:
            return
        RECONCILES.labels("status").inc()
        new = fold_status(
            cr=cr,
            deployment=_one(deployments, key),
            nodes=ready_nodes(cr, list(pods.get(key, ()))),
            outcome=_outcomes.get(key),
            now=dt.datetime.now(dt.UTC),
        )
        if not status_changed(_written.get(key, cr.get("status")), new):
            return
        await _kube.patch_status(MEMCACHED, key[0], key[1], {"status": new})
        _written[key] = new
