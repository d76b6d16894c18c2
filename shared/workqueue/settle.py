"""The result switch: how a run's result or exception settles its request.

Pure: given the request and what its handler returned or raised, :class:`SettlePolicy`
decides one :class:`Settlement`, which the queue carries out with NATS.

- A :class:`Result`: ack (``Succeed``); with ``requeue_after``, first publish a copy of the
  request marked ``Mcop-Not-Before`` and without the failure counts (a success starts afresh).
- The lease lost while the handler ran (the handler was cancelled): nak after the base delay
  (``LeaseLostRetry``).
- A PermanentError: terminate and tell ``on_permanent_error`` (``Terminate``); one marked
  ``dead_letter`` blames the message rather than the object and is dead-lettered at once.
- A failure of the transient kind (runtime/errors.py, ``as_transient``): run again after a
  capped exponential backoff (or the error's ``retry_after``), *not* counted towards
  ``max_deliveries``: an API server down for three minutes is no fault of the request. JetStream
  counts every nak as a delivery, so this is no nak: the queue publishes a copy marked
  ``Mcop-Not-Before``, ``Mcop-Transient-Retries`` (the backoff's exponent) and ``Mcop-Failures``
  (the attempts of earlier copies that did count), and acks the original
  (``RetryTransient``). The copy waits in the stream, not in a worker, so a few objects whose
  API calls keep failing cannot starve the others.
- Any other exception is a failure of the handler itself: nak with backoff, counted
  (``RetryFailure``), or dead-letter once ``max_deliveries`` is reached (``DeadLetter``).

Each copy is published only while no newer request for the object waits (an
expected-last-sequence check): otherwise the newer one runs, and the copy would replace it.
When a transient retry's copy cannot be published (NATS itself unreachable), the queue falls
back to a nak, which counts: once per request per NATS outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from memcached_operator.shared.runtime.backoff import retry_delay
from memcached_operator.shared.runtime.errors import PermanentError, TransientError, as_transient
from memcached_operator.shared.runtime.metrics import REQUEUE, REQUEUE_AFTER, SUCCESS
from memcached_operator.shared.workqueue.deadletter import publisher_headers
from memcached_operator.shared.workqueue.lease import EXPECTED_LAST_SUBJECT_SEQ
from memcached_operator.shared.workqueue.types import (
    FAILURES,
    NOT_BEFORE,
    TRANSIENT_RETRIES,
    Request,
    Result,
)


@dataclass(frozen=True)
class Succeed:
    """Ack; first publish a copy due ``requeue_after`` seconds from now, when not None."""

    requeue_after: float | None

    @property
    def result(self) -> str:
        """The result label of controller_runtime_reconcile_total."""
        if self.requeue_after is None:
            return SUCCESS
        return REQUEUE if self.requeue_after <= 0 else REQUEUE_AFTER


@dataclass(frozen=True)
class LeaseLostRetry:
    """Nak after ``delay``: the lease was lost while the handler ran, which was cancelled."""

    delay: float


@dataclass(frozen=True)
class Terminate:
    """Term, and tell ``on_permanent_error``."""

    error: PermanentError


@dataclass(frozen=True)
class DeadLetter:
    """Publish the dead-letter record, tell ``on_dead_letter``, then term."""

    error: Exception


@dataclass(frozen=True)
class RetryTransient:
    """Publish a copy due after ``delay``, marked as transient retry number ``retries``; ack."""

    error: TransientError
    retries: int
    delay: float


@dataclass(frozen=True)
class RetryFailure:
    """Nak after ``delay``; the attempt counts towards ``max_deliveries``."""

    error: Exception
    delay: float


Settlement = Succeed | LeaseLostRetry | Terminate | DeadLetter | RetryTransient | RetryFailure


@dataclass(frozen=True)
class SettlePolicy:
    """The switch from a run's result (or exception) to its settlement; ``jitter`` draws
    from [0, 1)."""

    max_deliveries: int
    backoff_base: float
    backoff_cap: float
    jitter: Callable[[], float]

    def settle(
        self, request: Request, outcome: Result | BaseException, *, lease_lost: bool = False
    ) -> Settlement:
        if isinstance(outcome, Result):
            return Succeed(outcome.requeue_after)
        if isinstance(outcome, asyncio.CancelledError) and lease_lost:
            return LeaseLostRetry(self.backoff_base)
        if not isinstance(outcome, Exception):
            raise outcome  # a cancellation or exit that is not the run's to settle
        if isinstance(outcome, PermanentError):
            return DeadLetter(outcome) if outcome.dead_letter else Terminate(outcome)
        transient = as_transient(outcome)
        if transient is not None:
            return self.transient(request, transient)
        return self.failure(request, outcome)

    def transient(self, request: Request, error: TransientError) -> RetryTransient:
        """A transient failure: not counted, so the backoff follows the transient retries."""
        retries = request.retries + 1
        delay = retry_delay(
            attempt=retries,
            base=self.backoff_base,
            cap=self.backoff_cap,
            retry_after=error.retry_after,
            jitter=self.jitter(),
        )
        return RetryTransient(error, retries, delay)

    def uncopied(self, request: Request, retry: RetryTransient) -> float:
        """The nak delay of a transient retry whose marked copy could not be published (NATS
        itself is failing, e.g. a stream electing a leader): the redelivery counts, so it waits
        as a counted failure would, never less than the transient delay. Otherwise a NATS
        outage of a second would spend every delivery of the requests it hit."""
        return max(retry.delay, self._counted_delay(request))

    def failure(self, request: Request, error: Exception) -> RetryFailure | DeadLetter:
        """A failure of the handler itself: counted, up to ``max_deliveries``."""
        if request.delivery >= self.max_deliveries:
            return DeadLetter(error)
        return RetryFailure(error, self._counted_delay(request))

    def _counted_delay(self, request: Request) -> float:
        """The backoff after ``request``'s delivery, when that delivery counts."""
        return retry_delay(
            attempt=request.delivery,
            base=self.backoff_base,
            cap=self.backoff_cap,
            retry_after=None,
            jitter=self.jitter(),
        )


def requeue_headers(request: Request, after: float, *, now: float) -> dict[str, str]:
    """The headers of the copy a ``requeue_after`` publishes (``now``: epoch seconds)."""
    headers = publisher_headers(request.headers)
    # A success: the next run starts with a clean slate.
    for name in (NOT_BEFORE, FAILURES, TRANSIENT_RETRIES):
        headers.pop(name, None)
    if after > 0:
        headers[NOT_BEFORE] = f"{now + after:.3f}"
    # Only while this request is still the newest: a newer one runs soon anyway, and this
    # copy would replace it (and its headers) in the stream.
    headers[EXPECTED_LAST_SUBJECT_SEQ] = str(request.sequence)
    return headers


def retry_headers(request: Request, retry: RetryTransient, *, now: float) -> dict[str, str]:
    """The headers of the copy a transient retry publishes (``now``: epoch seconds)."""
    headers = publisher_headers(request.headers)
    headers[NOT_BEFORE] = f"{now + retry.delay:.3f}"
    headers[TRANSIENT_RETRIES] = str(retry.retries)
    # This attempt does not count; the ones before it did.
    headers[FAILURES] = str(request.delivery - 1)
    # Only while this request is still the newest: a newer one runs soon anyway.
    headers[EXPECTED_LAST_SUBJECT_SEQ] = str(request.sequence)
    return headers
