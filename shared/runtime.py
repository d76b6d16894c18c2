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

from shared import logs, telemetry

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
