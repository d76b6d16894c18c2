"""The status service's settings: the common service settings, the work queue's (with
STATUS_CONCURRENCY), the write pacing and the yielding to the reconcilers."""

from __future__ import annotations

from memcached_operator.shared.runtime.settings import ServiceSettings, health_port, setting
from memcached_operator.shared.workqueue.options import QueueOptions, concurrency


class StatusSettings(QueueOptions, ServiceSettings):
    health_port: int = health_port(8083)
    # A refresh mostly waits (NATS round trips, the status PATCH, an Event): at 8, one status
    # process was the queue a 1,000-CR burst's Available writes waited in (p50 1.0 s after
    # the Deployment said Available; 0.2 s at 16, for the same CPU).
    concurrency: int = concurrency("STATUS", 16)
    min_interval: float = setting(
        1.0,
        env="STATUS_MIN_INTERVAL",
        ge=0,
        help="seconds between two status writes of one CR",
    )
    settle: float = setting(
        30.0,
        env="STATUS_SETTLE",
        ge=0,
        help="for up to this many seconds, a refresh that is a step early (the applied "
        "Deployment not streamed yet, the outcome not published yet, ready pods the Deployment "
        "has not counted yet) leaves the write to the request of that step",
    )
    yield_backlog: int = setting(
        16,
        env="STATUS_YIELD_BACKLOG",
        ge=-1,
        help="while more reconcile requests than this wait for a free reconciler, pause "
        "(up to --yield-pause seconds), then refresh one CR at a time, leaving the CPU and the "
        "API server to the reconciles (the waiting refreshes coalesce meanwhile); -1 never "
        "yields",
    )
    yield_pause: float = setting(
        10.0,
        env="STATUS_YIELD_PAUSE",
        ge=0,
        help="longest pause while yielding to the reconcilers",
    )
