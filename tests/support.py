"""Helpers the integration and e2e tests share: service processes, stream reads, waiting."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.layout import Layout
from deploy.local.processes import Record, Supervisor
from memcached_operator.admin import nats_auth
from memcached_operator.shared.bus.replay import replay
from memcached_operator.shared.bus.streams import EVENTS_STREAM, REQUESTS_STREAM
from memcached_operator.shared.bus.subjects import REQUESTS, wildcard
from memcached_operator.shared.kube.client import MEMCACHED, KubeClient


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.3) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test with `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def await_for(
    predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.3
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http_status(port: int, path: str) -> int:
    """The HTTP status of GET ``path`` on a local port (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, urllib.error.URLError):
        return 0


def metric(port: int, name: str, /, **labels: str) -> float:
    """The sum of the samples ``name`` of a service's /metrics whose labels include ``labels``
    (0 when there are none)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@dataclass
class StoredMessage:
    subject: str
    headers: dict[str, str]
    data: bytes
    seq: int


async def read_stream(
    nats_url: str, filter_subject: str, *, stream: str = EVENTS_STREAM
) -> list[StoredMessage]:
    """Every message of `stream` matching `filter_subject`, in stream order (``nats_url`` may
    list several servers, comma-separated, as for a NATS cluster)."""
    nc = await nats.connect(servers=nats_url.split(","), connect_timeout=5)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        return [
            StoredMessage(
                msg.subject, dict(msg.headers or {}), msg.data, msg.metadata.sequence.stream
            )
            async for msg in replay(js, filter_subject, stream=stream, config=config)
            if msg is not None
        ]
    finally:
        await nc.close()


async def pending_requests(nats_url: str, controller: str, namespace: str) -> int:
    """How many requests of ``controller`` for objects of ``namespace`` wait in the requests
    stream (taken or not: a request leaves the work-queue stream only when its run acks it)."""
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        filter_ = wildcard(REQUESTS, controller, namespace)
        try:
            info = await nc.jetstream().stream_info(REQUESTS_STREAM, subjects_filter=filter_)
        except NotFoundError:
            return 0  # no service has created the streams yet
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


def wait_requests_handled(nats_url: str, namespace: str, *, timeout: float = 60) -> None:
    """Wait until no reconcile or status request for an object of ``namespace`` is left in
    the work queue: every change seen so far has been handled (a deferred request stays in
    the stream until its run)."""
    wait_for(
        lambda: all(
            asyncio.run(pending_requests(nats_url, controller, namespace)) == 0
            for controller in ("reconcile", "status")
        ),
        timeout=timeout,
        what=f"the requests for {namespace} handled",
    )


@dataclass
class Services:
    """Service processes (watcher, reconciler, status) run as real child processes."""

    supervisor: Supervisor
    env: Mapping[str, str]
    started: list[str] = field(default_factory=list)

    def start(
        self,
        service: str,
        *args: str,
        name: str | None = None,
        program: Sequence[str] = (sys.executable, "-m", "memcached_operator.cli"),
        cwd: Path | None = None,
        **env: str,
    ) -> Record:
        """Start ``service`` with ``args``; ``program`` is the command line before the service
        name (default: this interpreter's `memcached-operator`)."""
        name = name or f"{service}-{uuid.uuid4().hex[:6]}"
        # Each service connects as its own NATS user, as in deploy/ (MCOP_STATE_DIR names the
        # local cluster whose generated passwords to use).
        credentials: dict[str, str] = {}
        state_dir = self.env.get("MCOP_STATE_DIR")
        if state_dir and service in nats_auth.SERVICE_USERS:
            credentials = Layout.load(Path(state_dir)).nats_credentials(service)
        rec = self.supervisor.start(
            name,
            [*program, service, "--health-port", "0", *args],
            env={**self.env, "LOG_FORMAT": "json", **credentials, **env},
            cwd=cwd,
        )
        self.started.append(name)
        return rec

    def pipeline(self, namespace: str, *, reconcilers: int = 1, **env: str) -> None:
        """The whole pipeline for ``namespace``: watcher, reconciler-0.., status-0."""
        self.start("watcher", "--namespaces", namespace, name="watcher", **env)
        for i in range(reconcilers):
            self.start("reconciler", name=f"reconciler-{i}", **env)
        self.start("status", name="status-0", **env)

    def kill(self, name: str) -> None:
        self.supervisor.kill(name)

    def stop(self, name: str, timeout: float = 35) -> None:
        self.supervisor.stop(name, timeout=timeout)

    def log(self, name: str) -> str:
        rec = self.supervisor.get(name)
        return Path(rec.log).read_text(errors="replace") if rec else ""

    def stop_all(self) -> None:
        for name in self.started:
            self.supervisor.stop(name, timeout=35)
        self.started.clear()


@contextmanager
def services(state_dir: Path, env: Mapping[str, str]) -> Iterator[Services]:
    svc = Services(Supervisor(state_dir), env)
    try:
        yield svc
    finally:
        svc.stop_all()


def memcached_manifest(
    name: str, namespace: str, size: int = 1, image: str | None = None
) -> dict[str, Any]:
    """A Memcached as a user would write it."""
    spec: dict[str, Any] = {"size": size}
    if image:
        spec["image"] = image
    return {
        "apiVersion": "cache.example.com/v1",
        "kind": "Memcached",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


async def create_many(
    kubeconfig: str, objs: list[dict[str, Any]], *, concurrency: int = 32
) -> None:
    """Create Memcacheds through the API, ``concurrency`` at a time (a burst, as a bench or a
    CI job makes one)."""
    kube = await KubeClient.connect(kubeconfig)
    sem = asyncio.Semaphore(concurrency)

    async def one(obj: dict[str, Any]) -> None:
        async with sem:
            await kube.request(
                "POST",
                MEMCACHED.path(obj["metadata"]["namespace"]),
                body=obj,
                resource="memcacheds",
            )

    try:
        await asyncio.gather(*(one(o) for o in objs))
    finally:
        await kube.close()


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition ``type_`` of an object's status ({} when it has none)."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}
