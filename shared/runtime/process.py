"""What every service process shares at start and stop: connections, signals, logging, tracing.

Its settings (flags and environment variables, interchangeable) are typed models in
shared/runtime/settings.py. SIGTERM and SIGINT set a stop event; a service stops taking work,
finishes what is in flight and returns, and the process exits within Kubernetes' default
30 s grace period. A process that cannot go on (its NATS connection was closed for good by
the server) stops the same way and exits 1, so that whatever supervises it starts it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from memcached_operator.shared.bus import connection as natsconn
from memcached_operator.shared.bus.stream_admin import ENSURE_COMMAND, stream_problems
from memcached_operator.shared.kube.client import KubeClient
from memcached_operator.shared.runtime import collector, logs, telemetry
from memcached_operator.shared.runtime.health import (
    HealthServer,
    JetStreamProbe,
    liveness_checks,
    readiness_checks,
)
from memcached_operator.shared.runtime.settings import ServiceSettings

log = logging.getLogger("memcached_operator")


class StopEvent(asyncio.Event):
    """The event a service stops on: set by SIGTERM/SIGINT, or by :meth:`fail` when the
    process cannot go on, which also makes it exit 1."""

    def __init__(self) -> None:
        super().__init__()
        self.failure: str | None = None

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.set()


def fail(stop: asyncio.Event, reason: str) -> None:
    """Stop the service because it cannot go on (exit 1 when ``stop`` is :func:`run`'s)."""
    if isinstance(stop, StopEvent):
        stop.fail(reason)
    else:
        stop.set()


def worker_id(service: str) -> str:
    return os.environ.get("POD_NAME") or f"{service}-{socket.gethostname()}-{os.getpid()}"


@dataclass
class Connections:
    """A service process's NATS connection, API client and health endpoint."""

    worker: str
    nc: Client
    js: JetStreamContext
    kube: KubeClient
    health: HealthServer
    closing: asyncio.Event
    probe: JetStreamProbe | None = None

    @classmethod
    async def open(
        cls,
        service: str,
        settings: ServiceSettings,
        *,
        streams: tuple[str, ...],
        stop: asyncio.Event,
    ) -> Connections:
        """Connect, serve /healthz, /readyz (the streams must exist as this code needs them)
        and /metrics, and wait until the admin step has created the streams, retrying while
        NATS is not there yet. Raises :class:`Stopped` when ``stop`` is set first (SIGTERM
        while NATS is unreachable or the streams are missing)."""
        opening = asyncio.create_task(cls._open(service, settings, streams=streams, stop=stop))
        if await _done_before(opening, stop):
            return opening.result()
        opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
        raise Stopped(f"{service} was asked to stop while it was still connecting")

    @classmethod
    async def _open(
        cls,
        service: str,
        settings: ServiceSettings,
        *,
        streams: tuple[str, ...],
        stop: asyncio.Event,
    ) -> Connections:
        worker = worker_id(service)
        closing = asyncio.Event()

        async def on_closed() -> None:
            if closing.is_set():
                return  # our own close
            # nats-py gives up on a connection after some server errors; nothing in this
            # process can publish or fetch any more, so stop and let a restart reconnect.
            reason = f"the NATS connection was closed for good ({nc.last_error!r})"
            log.error("%s; stopping %s", reason, service)
            fail(stop, reason)

        nc = await natsconn.connect(worker, settings.nats_url, on_closed=on_closed)
        kube: KubeClient | None = None
        health: HealthServer | None = None
        probe: JetStreamProbe | None = None
        try:
            kube = await KubeClient.connect(settings.kubeconfig)
            checks = readiness_checks(nc=nc, kube=kube, streams=streams)
            js = nc.jetstream()

            async def streams_as_needed() -> bool:
                # Present is not enough: shaped as this code needs them (stream_admin).
                return nc.is_connected and not await stream_problems(js, streams)

            checks["streams"] = streams_as_needed
            probe = JetStreamProbe(js, streams) if streams else None
            health = HealthServer(
                port=settings.health_port,
                checks=checks,
                liveness=liveness_checks(nc=nc, stall=settings.liveness_stall, jetstream=probe),
            )
            await health.start()
            if probe is not None:
                probe.start()
            await _wait_for_streams(js, streams)
        except BaseException:
            # Stopped (or failed) half-way: let go of what was opened.
            if probe is not None:
                await probe.stop()
            if health is not None:
                await health.stop()
            if kube is not None:
                await kube.close()
            closing.set()
            await nc.close()
            raise
        return cls(worker, nc, js, kube, health, closing, probe)

    async def close(self) -> None:
        self.closing.set()
        if self.probe is not None:
            await self.probe.stop()
        await self.health.stop()
        await self.kube.close()
        if not self.nc.is_closed:
            await self.nc.drain()


async def _wait_for_streams(js: JetStreamContext, streams: tuple[str, ...]) -> None:
    """Until the admin step has created the streams: a service never creates or fixes them
    (its NATS user may not); it stays unready and says what to run."""
    reported: list[str] = []
    while True:
        try:
            problems = await stream_problems(js, streams)
        except (nats.errors.Error, TimeoutError) as err:
            problems = [f"cannot read the streams ({err or type(err).__name__})"]
        if not problems:
            if reported:
                log.info("the streams are ready")
            return
        if problems != reported:
            log.error(
                "not ready: %s; run `%s` as the NATS admin (the Job nats-streams in "
                "Kubernetes); retrying",
                "; ".join(problems),
                ENSURE_COMMAND,
            )
            reported = problems
        await asyncio.sleep(2)


async def _done_before(task: asyncio.Future[Any], stop: asyncio.Event) -> bool:
    """Wait until ``task`` is done or ``stop`` is set; whether ``task`` is done."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return task.done()


class Stopped(Exception):
    """The process was asked to stop before it had finished starting."""


# Kubernetes' default grace period is 30 s: a service that has not stopped by itself by then
# (it stops taking work and finishes what is in flight) is cancelled just before.
STOP_GRACE = 28.0


def run(service: str, main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run `main(stop)` with logging and tracing set up; SIGTERM/SIGINT set `stop`, and the
    process exits within the grace period whatever `main` is doing then."""
    logs.setup(service)
    telemetry.setup(service)
    collector.tune()

    stop = StopEvent()

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        serving = asyncio.ensure_future(main(stop))
        if not await _done_before(serving, stop):
            await asyncio.wait({serving}, timeout=STOP_GRACE)
        if not serving.done():
            log.error("%s did not stop within %.0fs; cancelling what is left", service, STOP_GRACE)
            serving.cancel()
        try:
            await serving
        except Stopped as err:
            log.info("%s", err)
        except asyncio.CancelledError:
            if not stop.is_set():
                raise

    try:
        asyncio.run(runner())
    finally:
        telemetry.shutdown()
    if stop.failure is not None:
        log.error("%s stopped: %s", service, stop.failure)
        return 1
    return 0
