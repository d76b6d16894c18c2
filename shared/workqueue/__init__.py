"""A keyed work queue shared by a fleet of worker processes, built on JetStream.

The model. A request is a message on ``mcop.requests.<controller>.<namespace>.<name>``: "bring
this object to its desired state". The requests stream keeps one message per subject, so
requests that wait for the same object coalesce into the newest. Every process of one
controller pulls from one durable consumer, so any worker may take any request, the way a
consumer group shares work. Handlers are level-based: a run that *starts* after a request was
published satisfies it. A handler is small (types.py): ``async def __call__(request) ->
Result``, domain code only; the queue opens its consumer span (tracing.py), holds the lease,
keeps the message alive and maps what it returns or raises to a settlement.

One run per object at a time (lease.py). JetStream alone does not give it: when a request
arrives while a worker still holds the older one, the stream replaces the older message and
another worker receives the newer one at once. So a worker first creates the object's lease
key in the ``mcop-leases`` KV bucket (a create fails while another run holds it), refreshes it
while the handler runs, and deletes it afterwards, each write with a TTL so that a killed
worker's lease frees itself. A worker that finds the lease held neither naks (a nak counts as
a delivery) nor drops the message: it keeps it alive with in-progress acks and polls (woken at
once when the holder is in the same process). While waiting, and once more after acquiring if
it had to wait, it asks the stream for the subject's newest message: if that is a newer one, it
will run after this one; if there is none, a newer one replaced this one and has run already
(acked requests leave the stream). Either way it acks its stale one and lets go. A request
that gets the lease at once is not checked (a round trip per run): it was the newest when
delivered, a moment before. In the race where a newer one replaces it in between, is run
elsewhere and releases the lease first, the release's delete marker names the request that
ran (lease.py), and this one lets go on finding it; only if its first lease attempt comes
more than the marker's second after that release do both run, the older last (a no-op: a
run reads the newest state).
Hence no two runs of an object overlap, and requests that arrive during a run cause one more
run after it. A controller whose every write is conditional on the object's resourceVersion
may be declared ``exclusive="process"`` (controller.py; the status service is): its leases
are held in the process's memory (process_lease.py), so runs of one object are kept apart
within a process at no cost on the bus, and two processes' runs of it may overlap, the second
write then refused by the API server with a conflict and that run read again.

Why a lease and not hash partitions. One owner per partition also serialises each object, but
needs what NATS pull consumers do not provide: assigning partitions to live workers and
rebalancing them, which is the leader election we set out to avoid in another form. It also
caps the parallelism, lets one slow object hold up its partition, and makes a crashed worker's
partitions wait for the rebalance. The lease costs two small KV writes per run; any worker
takes any request, and a killed worker's request moves on after the ack wait and the lease
TTL. Like any TTL lease it cannot protect against a holder stalled longer than the TTL (the
holder notices at its next refresh and cancels its handler): keep the TTL well above the
longest event-loop stall.

Failures (settle.py). A PermanentError stops at once (terminated, ``on_permanent_error``
awaited; one marked ``dead_letter`` blames the message and is dead-lettered). A failure of the
transient kind (runtime/errors.py, ``as_transient``: an API 5xx, 429 or 409, a time-out, a
broken connection, JetStream unavailable or full for now) is retried with a capped
exponential backoff, without limit as in controller-runtime, and does *not* count towards
``max_deliveries``: an API server down for three minutes must not dead-letter every request
in flight. Since JetStream counts every nak, such a retry is a copy of the request marked
``Mcop-Not-Before``, ``Mcop-Transient-Retries`` and ``Mcop-Failures`` (the counted attempts of
earlier copies), published only while no newer request waits; the original is acked. The copy
waits in the stream, not in a worker, so a few failing objects cannot starve the others; each
retry counts in ``mcop_workqueue_retries_total{kind="transient"}`` so that a loop hiding a bug
shows. Any other exception is a failure of the handler: nak with backoff, counted.
``Request.delivery`` counts the attempts that count (intake.py), including runs that never
finished (a worker killed mid-run), so a request that crashes its worker every time still
ends, at ``max_deliveries``, in ``mcop.deadletter.<controller>.<namespace>.<name>`` with its
headers and body and ``Mcop-Deadletter-*`` headers saying why (deadletter.py). Poison requests
(a subject that does not parse, too large, a body that is not a JSON object, a required header
missing) go there at once. A ``requeue_after`` is a marked copy too, without the failure counts.
The first delivery of a marked copy is naked with the remaining delay: the one redelivery that
is not counted.

Yielding (yielding.py). The status service's queue steps aside while the reconciler has a
backlog: derived work waits, bounded, so that a burst of new objects gets its Deployments
sooner.

Where things are: types.py (Request, Result, Handler), controller.py (a controller's names),
settings.py (QueueSettings), intake.py, lease.py, process_lease.py, settle.py, deadletter.py,
yielding.py, tracing.py (all but lease.py's I/O part pure), keepalive.py (in-progress acks and
lease refreshes while a handler runs), runner.py (one request, from intake to settlement), queue.py
(the loop, and ``enqueue``), options.py (flags to settings).
"""

from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.queue import KeyedWorkQueue, enqueue
from memcached_operator.shared.workqueue.settings import QueueSettings
from memcached_operator.shared.workqueue.types import (
    ORIGIN,
    Handler,
    PermanentError,
    PoisonRequest,
    Prepared,
    PreparingHandler,
    Request,
    Result,
    TransientError,
)

__all__ = [
    "ORIGIN",
    "Controller",
    "Handler",
    "KeyedWorkQueue",
    "PermanentError",
    "PoisonRequest",
    "Prepared",
    "PreparingHandler",
    "QueueSettings",
    "Request",
    "Result",
    "TransientError",
    "enqueue",
]
