"""What every service process shares at start and stop: flags, signals, logging, tracing.

Flags read their defaults from environment variables (so a Deployment's env and a command
line are interchangeable). SIGTERM and SIGINT set a stop event; a service stops taking work,
finishes what is in flight and returns, and the process exits within Kubernetes' default
30 s grace period.
"""

from __future__ import annotations

import argparse
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

from shared import logs, natsconn, telemetry
from shared.http import HealthServer, readiness_checks
from shared.kube import KubeClient
from shared.streams import ensure_streams, parse_bytes

log = logging.getLogger("memcached_operator")


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def add_common_arguments(parser: argparse.ArgumentParser, *, health_port: int) -> None:
    parser.add_argument(
        "--nats-url", default=env("NATS_URL", "nats://127.0.0.1:4222"), help="env NATS_URL"
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="env KUBECONFIG")
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(env("HEALTH_PORT", str(health_port))),
        help="port of /healthz, /readyz and /metrics; 0 picks a free one (env HEALTH_PORT)",
    )
    parser.add_argument(
        "--stream-replicas",
        type=int,
        default=int(env("STREAM_REPLICAS", "1")),
        help="JetStream replicas for the streams (3 on a 3-node cluster) (env STREAM_REPLICAS)",
    )
    parser.add_argument(
        "--stream-max-bytes",
        type=parse_bytes,
        default=os.environ.get("STREAM_MAX_BYTES"),
        help="bytes all the streams may hold together, e.g. 8GiB (the default), split across "
        "them as shared/streams.py says; applied to a stream only when it has no limit yet, "
        "and must fit the NATS server's max_file_store (env STREAM_MAX_BYTES)",
    )


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

    @classmethod
    async def open(
        cls,
        service: str,
        args: argparse.Namespace,
        *,
        streams: tuple[str, ...],
        stop: asyncio.Event,
        events_max_age: float | None = None,
        lease_ttl: float | None = None,
    ) -> Connections:
        """Connect, serve /healthz, /readyz (the given streams must exist) and /metrics, and
        create the streams if missing, retrying while NATS is not there yet. Raises
        :class:`Stopped` when ``stop`` is set first (SIGTERM while NATS is unreachable)."""
        opening = asyncio.create_task(
            cls._open(
                service,
                args,
                streams=streams,
                events_max_age=events_max_age,
                lease_ttl=lease_ttl,
            )
        )
        if await _done_before(opening, stop):
            return opening.result()
        opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
        raise Stopped(f"{service} was asked to stop while it was still connecting")

    @classmethod
    async def _open(
        cls,
        service: str,
        args: argparse.Namespace,
        *,
        streams: tuple[str, ...],
        events_max_age: float | None,
        lease_ttl: float | None,
    ) -> Connections:
        worker = worker_id(service)
        nc = await natsconn.connect(worker, args.nats_url)
        kube: KubeClient | None = None
        health: HealthServer | None = None
        try:
            kube = await KubeClient.connect(args.kubeconfig)
            health = HealthServer(
                port=args.health_port, checks=readiness_checks(nc=nc, kube=kube, streams=streams)
            )
            await health.start()
            js = nc.jetstream()
            while True:
                try:
                    await ensure_streams(
                        js,
                        replicas=args.stream_replicas,
                        events_max_age=events_max_age,
                        lease_ttl=lease_ttl,
                        max_bytes=args.stream_max_bytes,
                    )
                    break
                except (nats.errors.Error, TimeoutError) as err:
                    log.warning("creating streams failed (%s); retrying", err)
                    await asyncio.sleep(1)
        except BaseException:
            # Stopped (or failed) half-way: let go of what was opened.
            if health is not None:
                await health.stop()
            if kube is not None:
                await kube.close()
            await nc.close()
            raise
        return cls(worker, nc, js, kube, health)

    async def close(self) -> None:
        await self.health.stop()
        await self.kube.close()
        await self.nc.drain()


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

    async def runner() -> None:
        stop = asyncio.Event()
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
    return 0
