"""Prometheus metrics of the reconcile pipeline, named as controller-runtime names them.

Where a metric means what controller-runtime's does, it has controller-runtime's name and
labels, so existing dashboards and alerts for Go operators work unchanged; ``workqueue_*``
describe the shared JetStream queue rather than an in-process one (``name`` is the controller).
The product's own metrics are prefixed ``mcop_`` (the watcher's, the status service's and the
API client's are defined beside the code that counts them). All live in the default registry,
which the metrics endpoint serves; :func:`init_controller` exports a controller's series at 0
from the start, as controller-runtime does, so that rates and alerts have a series to work on
before the first error or retry happens.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# controller-runtime's buckets for reconcile_time_seconds.
RECONCILE_TIME_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    *(0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
    *(6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0),
)
# client-go's workqueue buckets: 10ns to 1000s, a factor of 10 apart.
WORKQUEUE_DURATION_BUCKETS = tuple(1e-8 * 10**i for i in range(12))

# Values of the `result` label of reconcile_total.
SUCCESS = "success"
ERROR = "error"
REQUEUE = "requeue"
REQUEUE_AFTER = "requeue_after"

reconcile_total = Counter(
    "controller_runtime_reconcile_total",
    "Total number of reconciliations per controller",
    ["controller", "result"],
)
reconcile_errors_total = Counter(
    "controller_runtime_reconcile_errors_total",
    "Total number of reconciliation errors per controller",
    ["controller"],
)
reconcile_time_seconds = Histogram(
    "controller_runtime_reconcile_time_seconds",
    "Length of time per reconciliation per controller",
    ["controller"],
    buckets=RECONCILE_TIME_BUCKETS,
)
active_workers = Gauge(
    "controller_runtime_active_workers",
    "Number of currently used workers per controller",
    ["controller"],
)
max_concurrent_reconciles = Gauge(
    "controller_runtime_max_concurrent_reconciles",
    "Maximum number of concurrent reconciles per controller",
    ["controller"],
)

workqueue_depth = Gauge(
    "workqueue_depth",
    "Current depth of the workqueue (pending plus in-flight requests of the JetStream consumer)",
    ["name"],
)
workqueue_yielding = Gauge(
    "mcop_workqueue_yielding",
    "1 while this queue holds back (takes no request for a while, then one at a time) because "
    "the controller it yields to (the status service to the reconciler) has a backlog",
    ["name"],
)
workqueue_adds_total = Counter(
    "workqueue_adds_total",
    "Total number of adds handled by the workqueue",
    ["name"],
)
workqueue_queue_duration_seconds = Histogram(
    "workqueue_queue_duration_seconds",
    "How long in seconds a request stays in the workqueue before its handling starts",
    ["name"],
    buckets=WORKQUEUE_DURATION_BUCKETS,
)
# Finer than client-go's factor-10 buckets: whether a request waited 50 ms or 500 ms for a
# worker is the question when adding workers does not add throughput.
WAIT_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
# Per worker beside workqueue_queue_duration_seconds, whose labels stay controller-runtime's
# (dashboards sum it by name): a fleet whose workers take unequal shares shows here.
worker_queue_duration_seconds = Histogram(
    "mcop_workqueue_queue_duration_seconds",
    "How long in seconds a request waited from its publication until a handler of this "
    "worker started on it, by worker",
    ["controller", "worker"],
    buckets=WAIT_BUCKETS,
)
delivery_duration_seconds = Histogram(
    "mcop_workqueue_delivery_duration_seconds",
    "How long in seconds a request waited from its publication (or its not-before time) "
    "until it was delivered to this worker, by worker",
    ["controller", "worker"],
    buckets=WAIT_BUCKETS,
)
lease_wait_seconds = Histogram(
    "mcop_workqueue_lease_wait_seconds",
    "How long in seconds a delivered request waited for its object's lease (the create round "
    "trip included; longer while another run held the object), by worker",
    ["controller", "worker"],
    buckets=WAIT_BUCKETS,
)
idle_seconds_total = Counter(
    "mcop_workqueue_idle_seconds_total",
    "Seconds this worker's free slots spent waiting for a request (slot-seconds: a worker "
    "with concurrency 8 and nothing to do adds 8 per second), by worker",
    ["controller", "worker"],
)
workqueue_work_duration_seconds = Histogram(
    "workqueue_work_duration_seconds",
    "How long in seconds handling a request from the workqueue takes",
    ["name"],
    buckets=WORKQUEUE_DURATION_BUCKETS,
)
workqueue_retries_total = Counter(
    "workqueue_retries_total",
    "Total number of retries handled by the workqueue",
    ["name"],
)

dead_lettered_total = Counter(
    "mcop_dead_lettered_total",
    "Requests moved to the dead-letter stream, by reason",
    ["controller", "reason"],
)
lease_contention_total = Counter(
    "mcop_lease_contention_total",
    "Requests that found their object's lease held by another reconcile and waited for it",
    ["controller"],
)
superseded_total = Counter(
    "mcop_workqueue_superseded_total",
    "Delivered requests settled without a run because a newer request for the same object "
    "was waiting (coalesced after delivery; the newer one runs)",
    ["controller"],
)

messages_distrusted_total = Counter(
    "mcop_messages_distrusted_total",
    "Messages whose content contradicted their subject, their headers or the API server, by "
    "what disagreed (a forged or corrupted message; 'stale' ones are older than the API "
    "server's object and harmless): the message is ignored or dead-lettered, never acted on",
    ["controller", "reason"],
)


def init_controller(controller: str) -> None:
    """Create the labelled series of ``controller`` at 0 (or their empty histograms)."""
    for result in (SUCCESS, ERROR, REQUEUE, REQUEUE_AFTER):
        reconcile_total.labels(controller, result)
    reconcile_errors_total.labels(controller)
    reconcile_time_seconds.labels(controller)
    active_workers.labels(controller)
    workqueue_depth.labels(controller)
    workqueue_yielding.labels(controller)
    workqueue_adds_total.labels(controller)
    workqueue_queue_duration_seconds.labels(controller)
    workqueue_work_duration_seconds.labels(controller)
    workqueue_retries_total.labels(controller)
    lease_contention_total.labels(controller)
    superseded_total.labels(controller)
