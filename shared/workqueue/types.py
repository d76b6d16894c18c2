"""The small interfaces between the queue and its handlers: a request in, a result out.

As in controller-runtime's pkg/reconcile: a :class:`Handler` takes a :class:`Request` (which
object, plus what its publisher sent) and returns a :class:`Result` (done, or run again
later), or raises the errors of shared/runtime/errors.py (re-exported here) to say how it
failed. The queue does the rest: the consumer span, leases, acks and retries. A handler whose
span belongs in another trace than the request's (one that reads first, then knows) is a
:class:`PreparingHandler`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from opentelemetry.context import Context

from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.runtime import jsonc
from memcached_operator.shared.runtime.errors import PermanentError, TransientError

__all__ = [
    "FAILURES",
    "NOT_BEFORE",
    "ORIGIN",
    "TRANSIENT_RETRIES",
    "DeadLetterCallback",
    "Handler",
    "PermanentError",
    "PermanentErrorCallback",
    "PoisonRequest",
    "Prepared",
    "PreparingHandler",
    "Request",
    "Result",
    "TransientError",
]

# Every request says who asked for it ("watcher:memcached.modified", "reconciler:success",
# ...); the services' queues require it, so a message without it is refused as poison.
ORIGIN = "Mcop-Origin"
# Headers the queue adds to the copies it publishes (requeue_after, transient retries).
# Everything else on a request is the publisher's and passes through.
NOT_BEFORE = "Mcop-Not-Before"
FAILURES = "Mcop-Failures"
TRANSIENT_RETRIES = "Mcop-Transient-Retries"


@dataclass(frozen=True)
class Request:
    """One request to reconcile ``key``, as the handler sees it.

    ``headers`` and ``body`` are what the publisher sent (``traceparent`` included; a copy
    made for ``requeue_after`` or a transient retry also carries the queue's ``Mcop-*``
    headers). ``delivery`` is 1 on the first attempt and grows with each one that failed in a
    way that counts towards ``max_deliveries`` (not a transient failure); ``retries`` is the
    number of transient failures before this attempt.
    """

    key: ObjectKey
    controller: str
    headers: Mapping[str, str]
    body: bytes
    delivery: int
    published_at: datetime
    sequence: int
    retries: int = 0

    def payload(self) -> dict[str, Any]:
        """The JSON body as a dict (empty when there is no body)."""
        if not self.body:
            return {}
        doc: dict[str, Any] = jsonc.loads(self.body)
        return doc


@dataclass(frozen=True)
class Result:
    """What a successful run asks for: nothing, or another run ``requeue_after`` seconds later."""

    requeue_after: float | None = None


class Handler(Protocol):
    """Brings ``request.key`` to its desired state; run inside the queue's consumer span."""

    async def __call__(self, request: Request, /) -> Result: ...


@dataclass(frozen=True)
class Prepared:
    """What a :class:`PreparingHandler` read, as the rest of its run and where to trace it.

    The queue opens the consumer span with ``parent`` (the request's own context when None)
    and links to ``links``, then awaits ``run`` inside it.
    """

    run: Callable[[], Awaitable[Result]]
    parent: Context | None = None
    links: Sequence[Context | None] = ()


@runtime_checkable
class PreparingHandler(Protocol):
    """A handler that reads before its span starts, because what it reads decides which trace
    the span joins (the status service: the reconcile whose outcome it reports). ``prepare``
    runs outside the span and returns a :class:`Result` when there is nothing more to do."""

    async def prepare(self, request: Request, /) -> Result | Prepared: ...


class PoisonRequest(PermanentError):
    """A request the queue rejects before any handler sees it."""


DeadLetterCallback = Callable[[Request, Exception], Awaitable[None]]
PermanentErrorCallback = Callable[[Request, PermanentError], Awaitable[None]]
