"""The HTTP endpoints every service serves: /healthz, /readyz and /metrics.

/healthz answers when the event loop does (a stuck loop cannot answer). /readyz runs the
service's named readiness checks (NATS connected, API server reachable, streams present) and
answers 200 only if all pass, listing each check's result either way, in the style of the
API server's own /readyz?verbose. /metrics is the Prometheus text format of the default
registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Check = Callable[[], Awaitable[bool]]


class HealthServer:
    def __init__(self, *, port: int, checks: Mapping[str, Check], host: str = "0.0.0.0") -> None:
        self._port = port
        self._host = host
        self._checks = dict(checks)
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        return self._port

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

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
