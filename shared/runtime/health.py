"""The HTTP endpoints every service serves: /healthz, /readyz and /metrics.

/healthz is liveness: it answers when the event loop does (a stuck loop cannot answer) and
its liveness checks pass: the NATS client is not closed for good (nats-py does not reconnect
after some server errors), and work that waits is making progress (shared/runtime/progress.py,
within ``--liveness-stall`` seconds); :func:`liveness_checks` builds them. A failing check answers
503, so Kubernetes restarts the process. /readyz runs the service's named readiness checks
(NATS connected, API server reachable, streams present) and answers 200 only if all pass,
listing each check's result either way, in the style of the API server's own /readyz?verbose;
:func:`readiness_checks` builds the three every service of the pipeline has. /metrics is the
Prometheus text format of the default registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from memcached_operator.shared.bus.stream_admin import stream_problems
from memcached_operator.shared.kube.client import KubeClient
from memcached_operator.shared.runtime.progress import TRACKER, Progress

Check = Callable[[], Awaitable[bool]]
# A liveness check: why the process is not alive, or None when it is. Synchronous and cheap,
# so that /healthz never waits on what may be stuck.
LiveCheck = Callable[[], str | None]


class JetStreamProbe:
    """Whether JetStream says it cannot work, asked every few seconds in the background.

    Work that waits on a JetStream without a quorum (two of three nodes lost) makes no
    progress, and a restart cannot change that: the service then stays alive and reports not
    ready (/readyz's streams check fails), rather than being restarted in a loop. The probe
    reads the service's streams' info (stream_admin.stream_problems, quorum included), which
    every service's NATS user may. Only an answer counts: a server that answers nothing at all
    (hung, or unreachable) is this connection's problem, which a restart may well solve (it
    reconnects, to another node of a cluster), so it excuses nothing.

    Every 5 s: the answer only has to be fresh next to the liveness bound (``--liveness-stall``,
    120 s by default), and every process of a fleet asks the stream leaders for the info of each
    of its streams (a reconciler under load spent about 5 % of its CPU on it at 2 s).
    """

    def __init__(
        self,
        js: JetStreamContext,
        streams: tuple[str, ...],
        *,
        every: float = 5.0,
        timeout: float = 2.0,
    ) -> None:
        self._js = js
        self._streams = streams
        self._every = every
        self._timeout = timeout
        self.unavailable = False  # JetStream answered that it cannot store (no leader, quorum)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                problems = await asyncio.wait_for(
                    stream_problems(self._js, self._streams), timeout=self._timeout
                )
                self.unavailable = bool(problems)
            except asyncio.CancelledError:
                raise
            except APIError:
                self.unavailable = True  # an answer: e.g. 503, JetStream without a leader
            except Exception:
                self.unavailable = False  # no answer at all: see the class docstring
            await asyncio.sleep(self._every)


def liveness_checks(
    *,
    nc: Client,
    stall: float,
    progress: Progress = TRACKER,
    jetstream: JetStreamProbe | None = None,
) -> dict[str, LiveCheck]:
    """The NATS client is not closed for good, and work that waits progresses within
    ``stall`` seconds (0 or less turns the progress check off) unless ``jetstream`` says
    JetStream does not answer (a restart would not help: see :class:`JetStreamProbe`)."""

    def nats_open() -> str | None:
        if not nc.is_closed:
            return None
        return f"the NATS connection is closed and will not reconnect ({nc.last_error!r})"

    def making_progress() -> str | None:
        stalled = progress.stalled_for()
        if stall <= 0 or stalled <= stall:
            return None
        if jetstream is not None and jetstream.unavailable:
            return None  # not ready (the streams check), but alive
        return (
            f"{progress.pending} units of work waiting, no progress for {stalled:.0f}s "
            f"(bound {stall:.0f}s)"
        )

    return {"nats": nats_open, "progress": making_progress}


def readiness_checks(*, nc: Client, kube: KubeClient, streams: Iterable[str]) -> dict[str, Check]:
    """NATS connected, API server reachable, and the service's streams present; a failure or
    a timeout (see :meth:`HealthServer._run_check`) is not ready."""
    js = nc.jetstream()
    names = tuple(streams)

    async def nats_connected() -> bool:
        return bool(nc.is_connected)

    async def apiserver_reachable() -> bool:
        # /version answers JSON to anyone (system:public-info-viewer); the API server's own
        # /readyz answers plain text, which the JSON client cannot take.
        await kube.request("GET", "/version", resource="version", timeout=2, traced=False)
        return True

    async def streams_present() -> bool:
        if not nc.is_connected:
            return False  # a request would only wait for the reconnect
        for name in names:
            await js.stream_info(name)
        return True

    return {"nats": nats_connected, "apiserver": apiserver_reachable, "streams": streams_present}


class HealthServer:
    def __init__(
        self,
        *,
        port: int,
        checks: Mapping[str, Check],
        liveness: Mapping[str, LiveCheck] | None = None,
        host: str = "0.0.0.0",
    ) -> None:
        self._port = port
        self._host = host
        self._checks = dict(checks)
        self._liveness = dict(liveness or {})
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        return self._port

    async def _healthz(self, _request: web.Request) -> web.Response:
        failures = [(name, check()) for name, check in self._liveness.items()]
        failed = [f"[-]{name} failed: {why}" for name, why in failures if why is not None]
        if not failed:
            return web.Response(text="ok\n")
        return web.Response(text="\n".join([*failed, "healthz check failed"]) + "\n", status=503)

    async def _run_check(self, check: Check) -> bool:
        try:
            return await asyncio.wait_for(check(), timeout=3)
        except Exception:
            return False

    async def _readyz(self, _request: web.Request) -> web.Response:
        names = list(self._checks)
        results = await asyncio.gather(*(self._run_check(self._checks[n]) for n in names))
        lines = [
            f"[{'+' if ok else '-'}]{name} {'ok' if ok else 'failed'}"
            for name, ok in zip(names, results, strict=True)
        ]
        ready = all(results)
        lines.append("readyz check passed" if ready else "readyz check failed")
        return web.Response(text="\n".join(lines) + "\n", status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        if self._port == 0 and site._server is not None:
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self._port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
