"""The reconciler process's settings: the common service settings, the work queue's (with
RECONCILE_CONCURRENCY) and the managed Deployments' progress deadline."""

from __future__ import annotations

from memcached_operator.shared.runtime.settings import ServiceSettings, health_port, setting
from memcached_operator.shared.workqueue.options import QueueOptions, concurrency


class ReconcilerSettings(QueueOptions, ServiceSettings):
    health_port: int = health_port(8082)
    concurrency: int = concurrency("RECONCILE")
    progress_deadline: int = setting(
        600,
        env="PROGRESS_DEADLINE_SECONDS",
        ge=1,
        help="progressDeadlineSeconds of the managed Deployments",
    )
