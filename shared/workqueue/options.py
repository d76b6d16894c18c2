"""The work-queue options a controller process takes from its flags and environment, and the
queue built from them (the reconciler and the status service both run one)."""

from __future__ import annotations

import argparse

from memcached_operator.shared.runtime import process as runtime
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.queue import KeyedWorkQueue
from memcached_operator.shared.workqueue.settings import QueueSettings
from memcached_operator.shared.workqueue.types import ORIGIN, DeadLetterCallback


def add_queue_arguments(parser: argparse.ArgumentParser, *, prefix: str) -> None:
    """Work-queue flags shared by the reconciler and the status service."""
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(runtime.env(f"{prefix}_CONCURRENCY", "8")),
        help=f"requests handled at once by this process (env {prefix}_CONCURRENCY)",
    )
    parser.add_argument(
        "--ack-wait",
        type=float,
        default=float(runtime.env("ACK_WAIT", "30")),
        help="seconds before a silent worker's request is redelivered (env ACK_WAIT)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=float(runtime.env("LEASE_TTL", "30")),
        help="seconds a dead worker's per-object lease outlives it (env LEASE_TTL)",
    )
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=int(runtime.env("MAX_DELIVERIES", "10")),
        help="failed deliveries before a request is dead-lettered (env MAX_DELIVERIES)",
    )
    parser.add_argument(
        "--backoff-cap",
        type=float,
        default=float(runtime.env("BACKOFF_CAP", "60")),
        help="longest retry delay in seconds (env BACKOFF_CAP)",
    )


def queue_from_args(
    conn: runtime.Connections,
    args: argparse.Namespace,
    *,
    controller: Controller | str,
    on_dead_letter: DeadLetterCallback | None = None,
    yield_to: Controller | str | None = None,
    yield_backlog: int = 16,
    yield_pause: float = 10.0,
) -> KeyedWorkQueue:
    """The controller's work queue configured from the flags of add_queue_arguments."""
    settings = QueueSettings(
        concurrency=args.concurrency,
        ack_wait=args.ack_wait,
        lease_ttl=args.lease_ttl,
        max_deliveries=args.max_deliveries,
        backoff_cap=args.backoff_cap,
        required_headers=(ORIGIN,),
        yield_backlog=yield_backlog,
        yield_pause=yield_pause,
    )
    return KeyedWorkQueue(
        conn.nc,
        controller=controller,
        settings=settings,
        on_dead_letter=on_dead_letter,
        worker_id=conn.worker,
        yield_to=yield_to,
    )
