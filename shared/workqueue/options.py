"""The work-queue options a controller process takes from its flags and environment
(:class:`QueueOptions`, typed settings), and the queue built from them: the options become the
queue's :class:`~memcached_operator.shared.workqueue.settings.QueueSettings` (the reconciler and
the status service both run one)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from memcached_operator.shared.runtime import process as runtime
from memcached_operator.shared.runtime.settings import Settings, setting
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.queue import KeyedWorkQueue
from memcached_operator.shared.workqueue.settings import QueueSettings
from memcached_operator.shared.workqueue.types import ORIGIN, DeadLetterCallback


def concurrency(prefix: str, default: int = 8) -> Any:
    """The ``concurrency`` field of a controller, read from ``<prefix>_CONCURRENCY`` (two
    controllers' processes may share one environment, e.g. a local cluster's shell)."""
    return setting(
        default, env=f"{prefix}_CONCURRENCY", ge=1, help="requests handled at once by this process"
    )


class QueueOptions(Settings):
    """Work-queue settings shared by the reconciler and the status service. Each controller's
    settings redeclare ``concurrency`` with :func:`concurrency` and its own prefix (left without
    a variable here, add_flags refuses a model that forgot to)."""

    concurrency: int = Field(8, ge=1)
    ack_wait: float = setting(
        30.0, env="ACK_WAIT", gt=0, help="seconds before a silent worker's request is redelivered"
    )
    lease_ttl: float = setting(
        30.0, env="LEASE_TTL", gt=0, help="seconds a dead worker's per-object lease outlives it"
    )
    max_deliveries: int = setting(
        10, env="MAX_DELIVERIES", ge=1, help="failed deliveries before a request is dead-lettered"
    )
    backoff_cap: float = setting(
        60.0, env="BACKOFF_CAP", ge=0, help="longest retry delay in seconds"
    )


def queue_from_args(
    conn: runtime.Connections,
    args: QueueOptions,
    *,
    controller: Controller | str,
    on_dead_letter: DeadLetterCallback | None = None,
    yield_to: Controller | str | None = None,
    yield_backlog: int = 16,
    yield_pause: float = 10.0,
) -> KeyedWorkQueue:
    """The controller's work queue, tuned by the process's options."""
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
