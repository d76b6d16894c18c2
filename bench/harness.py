"""What every scenario shares: creating the CRs, watching them converge, and measuring.

The harness talks to the API server as the admin user, so none of its requests count as the
operator's. :class:`Observer` watches the scenario's Memcacheds and the objects each owns
(Deployment, headless Service, PodDisruptionBudget) and records, per CR, the first moment its
Deployment matched the desired one, the first moment all of its objects did (the Service, and
the PodDisruptionBudget when size >= 2, too), and the first moment the CR reported
Available=True for its current generation. :class:`RssPoller` samples the resident
memory of the contender's processes from /proc. All times are ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.watch import watch_forever
from deploy.local.layout import Layout
from deploy.local.layout import free_port as free_port  # re-exported for the bench modules
from memcached_operator.reconciler.companions import desired_pdb, desired_service
from memcached_operator.reconciler.desired import desired_deployment, matches
from memcached_operator.shared.api.models import Memcached
from memcached_operator.shared.kube.client import (
    DEPLOYMENT,
    MEMCACHED,
    PDB,
    SERVICE,
    ApiError,
    JsonObject,
    KubeClient,
)

REPO = Path(__file__).resolve().parent.parent


def service_command(service: str, health_port: int, *args: str) -> list[str]:
    """The command line of one of this system's services (``memcached-operator <service>``)."""
    return [
        sys.executable,
        "-m",
        "memcached_operator.cli",
        service,
        "--health-port",
        str(health_port),
        *args,
    ]


def process_env(kubeconfig: Path, **extra: str) -> dict[str, str]:
    """A child process's environment: this one's, with ``kubeconfig``, the checkout on
    PYTHONPATH and JSON logs, then ``extra``."""
    env = dict(os.environ)
    env.update(KUBECONFIG=str(kubeconfig), PYTHONPATH=str(REPO), LOG_FORMAT="json")
    env.update(extra)
    return env


def nats_env(layout: Layout, user: str) -> dict[str, str]:
    """NATS_URL (and the user's credentials, where the local server has users) for a service."""
    credentials = getattr(layout, "nats_credentials", None)
    if credentials is not None:
        env: dict[str, str] = credentials(user)
        return env
    return {"NATS_URL": layout.nats_url}


def memcached(name: str, namespace: str, *, size: int = 1) -> JsonObject:
    return {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"size": size},
    }


async def create_namespace(kube: KubeClient, name: str) -> None:
    await kube.request(
        "POST",
        "/api/v1/namespaces",
        body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        resource="namespaces",
    )


async def delete_namespace(kube: KubeClient, name: str, *, timeout: float = 600.0) -> float:
    """Delete a namespace and wait until it and everything in it are gone (the next scenario
    then meets the cluster as the first one did); returns the seconds that took."""
    started = time.monotonic()
    path = f"/api/v1/namespaces/{name}"
    with contextlib.suppress(ApiError):
        await kube.request("DELETE", path, resource="namespaces")
    while time.monotonic() - started < timeout:
        try:
            await kube.request("GET", path, resource="namespaces", traced=False)
        except ApiError as err:
            if err.status == 404:
                return time.monotonic() - started
            raise
        await asyncio.sleep(1.0)
    raise TimeoutError(f"namespace {name} still there after {timeout:.0f}s")


async def create_crs(
    kube: KubeClient,
    objs: list[JsonObject],
    *,
    concurrency: int,
    on_created: Any = None,
) -> dict[str, float]:
    """POST every CR, `concurrency` at a time; returns name -> time the POST returned."""
    sem = asyncio.Semaphore(concurrency)
    created: dict[str, float] = {}

    async def one(obj: JsonObject) -> None:
        meta = obj["metadata"]
        async with sem:
            for attempt in range(5):
                try:
                    live = await kube.request(
                        "POST", MEMCACHED.path(meta["namespace"]), body=obj, resource="memcacheds"
                    )
                    break
                except Exception:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5)
        created[meta["name"]] = time.monotonic()
        if on_created is not None:
            on_created(live)

    await asyncio.gather(*(one(o) for o in objs))
    return created


def _available(cr: JsonObject) -> bool:
    meta = cr.get("metadata") or {}
    status = cr.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Available":
            return cond.get("status") == "True" and status.get("observedGeneration", 0) >= meta.get(
                "generation", 0
            )
    return False


def deployment_available(dep: JsonObject) -> bool:
    """The Deployment's own word that its pods are up: the controller has observed its spec,
    counts every replica ready, and says Available (what a CR's Available folds from)."""
    meta = dep.get("metadata") or {}
    status = dep.get("status") or {}
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False
    if int(status.get("readyReplicas") or 0) < int((dep.get("spec") or {}).get("replicas") or 0):
        return False
    return any(
        c.get("type") == "Available" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


# The objects a CR owns besides its Deployment, by the name the Observer keeps them under.
COMPANIONS = (("service", SERVICE, desired_service), ("pdb", PDB, desired_pdb))


@dataclass
class Observer:
    """Watches one namespace and timestamps convergence per CR."""

    kube: KubeClient
    namespace: str
    expected: int
    crs: dict[str, JsonObject] = field(default_factory=dict)
    desired: dict[str, JsonObject] = field(default_factory=dict)
    # kind -> CR name -> the desired Service or PDB (None: the CR must not have one).
    desired_companions: dict[str, dict[str, JsonObject | None]] = field(default_factory=dict)
    last_deployment: dict[str, JsonObject] = field(default_factory=dict)
    last_companion: dict[str, dict[str, JsonObject]] = field(default_factory=dict)
    deployment_ok: dict[str, float] = field(default_factory=dict)
    # Every owned object as desired: the Deployment, the Service and the PDB (when wanted).
    objects_ok: dict[str, float] = field(default_factory=dict)
    available: dict[str, float] = field(default_factory=dict)
    # When each CR's Deployment itself first said Available (the control plane's part done).
    deployment_available: dict[str, float] = field(default_factory=dict)
    deployments_seen: set[str] = field(default_factory=set)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    deployments_done: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        watches: list[tuple[Any, Any]] = [
            (DEPLOYMENT, self._on_deployment),
            (MEMCACHED, self._on_cr),
            *((res, self._on_companion(kind)) for kind, res, _ in COMPANIONS),
        ]
        synced = [asyncio.Event() for _ in watches]
        self._tasks = [
            asyncio.create_task(
                watch_forever(self.kube, res, namespace=self.namespace, on_event=handler, synced=s)
            )
            for (res, handler), s in zip(watches, synced, strict=True)
        ]
        await asyncio.gather(*(s.wait() for s in synced))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def created(self, cr: JsonObject) -> None:
        """Called with the POST response, which carries the uid the desired state needs."""
        self._on_cr("ADDED", cr)

    def _on_cr(self, kind: str, cr: JsonObject) -> None:
        name = cr["metadata"]["name"]
        if kind == "DELETED":
            return
        now = time.monotonic()
        self.crs[name] = cr
        if name not in self.desired:
            model = Memcached.from_api(cr)
            self.desired[name] = desired_deployment(model)
            for companion, _, desired in COMPANIONS:
                self.desired_companions.setdefault(companion, {})[name] = desired(model)
            if name in self.last_deployment:
                self._check_deployment(name, now)
            self._check_objects(name, now)
        if name not in self.available and _available(cr):
            self.available[name] = now
            self._changed.set()

    def _on_deployment(self, kind: str, dep: JsonObject) -> None:
        name = dep["metadata"]["name"]
        if kind == "DELETED":
            self.last_deployment.pop(name, None)
            return
        self.deployments_seen.add(name)
        self.last_deployment[name] = dep
        now = time.monotonic()
        if name not in self.deployment_available and deployment_available(dep):
            self.deployment_available[name] = now
        self._check_deployment(name, now)
        self._check_objects(name, now)

    def _on_companion(self, companion: str) -> Any:
        def on_event(kind: str, obj: JsonObject) -> None:
            name = obj["metadata"]["name"]
            seen = self.last_companion.setdefault(companion, {})
            if kind == "DELETED":
                # A budget the CR should not have, gone: that may be the last step.
                seen.pop(name, None)
            else:
                seen[name] = obj
            self._check_objects(name, time.monotonic())

        return on_event

    def _check_deployment(self, name: str, now: float) -> None:
        desired = self.desired.get(name)
        if desired is None or name in self.deployment_ok:
            return
        if matches(self.last_deployment[name], desired):
            self.deployment_ok[name] = now
            self._changed.set()
            if len(self.deployment_ok) >= self.expected:
                self.deployments_done.set()

    def _check_objects(self, name: str, now: float) -> None:
        """Record the first moment every object ``name`` should own is as desired (and none it
        should not own exists)."""
        if name in self.objects_ok or name not in self.deployment_ok:
            return
        for companion, _, _ in COMPANIONS:
            desired = self.desired_companions.get(companion, {}).get(name)
            live = self.last_companion.get(companion, {}).get(name)
            if (desired is None) != (live is None):
                return
            if desired is not None and live is not None and not matches(live, desired):
                return
        self.objects_ok[name] = now
        self._changed.set()

    def done(self, *, need_available: bool = True) -> bool:
        if len(self.objects_ok) < self.expected:
            return False
        return not need_available or len(self.available) >= self.expected

    async def wait(self, *, timeout: float, need_available: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while not self.done(need_available=need_available):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1.0))
        return True


def http_get(port: int, path: str, *, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``path`` of a loopback port: the status and the body, of an error response too;
    (0, "") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return int(resp.status), str(resp.read().decode())
    except urllib.error.HTTPError as err:
        return int(err.code), str(err.read().decode())
    except OSError:
        return 0, ""


def scrape(port: int, path: str = "/metrics") -> str:
    """The body of a successful response, else ""."""
    status, body = http_get(port, path)
    return "" if status >= 400 else body


def metric_sum(text: str, name: str, /, **labels: str) -> float:
    """The sum of one Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if all(have.get(k) == v for k, v in labels.items()):
            with contextlib.suppress(ValueError):
                total += float(value)
    return total


async def wait_http_ok(port: int, path: str, *, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok, _ = await asyncio.to_thread(http_get, port, path, timeout=3)
        if ok == 200:
            return
        if alive is not None and not alive():
            raise RuntimeError(f"process serving :{port} exited before it was ready")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"127.0.0.1:{port}{path} not ready after {timeout}s")


async def wait_service_ready(port: int, *, timeout: float, alive: Any = None) -> None:
    """Wait until a service's /readyz reports NATS and the streams ready (the harness has
    already checked the API server, and an older build's apiserver check could not pass)."""
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        _, body = await asyncio.to_thread(http_get, port, "/readyz")
        if "[+]nats" in body and "[+]streams" in body:
            return
        if alive is not None and not alive():
            raise RuntimeError(f"process serving :{port} exited before it was ready")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"127.0.0.1:{port}/readyz not ready after {timeout}s: {body!r}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def source_version(repo: Path) -> dict[str, Any]:
    """The commit the services ran from, and which of their files differed from it."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
            ).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "services", "shared", "deploy")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_service_files": [line[3:] for line in changed.splitlines()],
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem_kb = int(match.group(1)) if match else 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
