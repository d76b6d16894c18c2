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

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from shared import logs, natsconn, telemetry
from shared.http import HealthServer, readiness_checks
from shared.kube import KubeClient
from shared.streams import ensure_streams

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
        events_max_age: float | None = None,
        lease_ttl: float | None = None,
    ) -> Connections:
        """Connect, serve /healthz, /readyz (the given streams must exist) and /metrics, and
        create the streams if missing, retrying while NATS is not there yet."""
        worker = worker_id(service)
        nc = await natsconn.connect(worker, args.nats_url)
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
                )
                break
            except (nats.errors.Error, TimeoutError) as err:
                log.warning("creating streams failed (%s); retrying", err)
                await asyncio.sleep(1)
        return cls(worker, nc, js, kube, health)

    async def close(self) -> None:
        await self.health.stop()
        await self.kube.close()
        await self.nc.drain()


def run(service: str, main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run `main(stop)` with logging and tracing set up; SIGTERM/SIGINT set `stop`."""
    logs.setup(service)
    telemetry.setup(service)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    finally:
        telemetry.shutdown()
    return 0
