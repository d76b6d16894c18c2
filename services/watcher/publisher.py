"""Publishing in order: every message stored (or dead-lettered) before the watcher moves on.

Publishes are pipelined (publish_async) and confirmed in order (:meth:`Publisher.flush`), which
keeps ~thousands of changes per second without giving up ordering per object: a failed one is
re-sent, with everything after it, and the message ids (``Nats-Msg-Id``) make re-sends of stored
messages harmless. A message that cannot be published is dead-lettered so that the next one can
be (deadletters.py). What to publish for a change is emitter.py's; requests published here count
as workqueue adds, as those of :func:`memcached_operator.shared.workqueue.queue.enqueue` do.

A request is published only once the event before it is stored, and carries that event's
stream sequence (``Mcop-Events-Seq``, shared/events/state.py): on a NATS cluster the events and
requests streams have their own leaders, so a request published right behind its event could
otherwise reach a worker before the event is readable, and a follower answering the worker's
read might not hold the event yet.

Events and requests wait for the next flush (every 50 ms, or sooner when a batch is full: 256
messages, or 4 MiB of event bodies, so that a relist of large objects holds a bounded amount),
which publishes them together. During a burst changes trickle in a few per event-loop turn
(~250/s in the bench), and writing each at once cost one socket write, one acknowledgement read
and their event-loop turns per change in the watcher, and as many wake-ups in nats-server:
measured with ``python -m bench.watcher_cpu`` (the watcher's emit path against a real nats-
server at 250 changes/s), holding them for a 20 ms flush cut nats-server's CPU per change by
32-45 % and the watcher's by 14-20 %, and in the 1,000-CR bench both by 6-16 %
(bench/README.md). A flush costs about the same whether it carries two changes or twenty (a
write, the acks' reads, a dozen event-loop turns on each side), and while the control plane
rolls the pods out the watcher sees only 100-200 changes a second: every 50 ms instead of 20 cut
the watcher's CPU per change by 22-25 % and nats-server's by 35 % at 100-250 changes/s
(``bench.watcher_cpu --rate``), and in the 1,000-CR burst the watcher's by 6 % and nats-server's
by 11 %, for at most 50 ms more on the way to the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from memcached_operator.shared.bus import subjects
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import state
from memcached_operator.shared.events.codec import MSG_ID
from memcached_operator.shared.runtime import metrics
from memcached_operator.shared.runtime.progress import TRACKER, Progress
from memcached_operator.watcher.deadletters import (
    DEADLETTER_CONTROLLER,
    MESSAGE_TOO_LARGE,
    PUBLISH_FAILED,
    dead_letter,
    header_text,
    refusal,
)

log = logging.getLogger("memcached_operator.watcher")

EVENTS_PUBLISHED = Counter(
    "mcop_events_published_total",
    "Change events stored in the stream (duplicates not included)",
    ["kind", "change"],
)
DUPLICATES_DROPPED = Counter(
    "mcop_events_duplicates_total",
    "Change events the stream already held (another replica or a restart published them)",
    ["kind"],
)
REQUESTS_PUBLISHED = Counter(
    "mcop_requests_published_total", "Requests sent to the work queues", ["controller"]
)

ACK_TIMEOUT = 5.0
# Bytes of queued event bodies that make a batch full, however few messages it holds: what a
# flush holds in memory at once (a relist of large objects queues them as fast as it reads).
BATCH_BYTES = 4 * 1024 * 1024
# Seconds between flushes (a full batch goes at once): see the module docstring.
FLUSH_INTERVAL = 0.05
# Reads of a subject's newest event before a re-send decides what to skip (see _resend).
POSITION_TRIES = 5
# nats-server's default max_payload, for a publisher without a connection (unit tests).
DEFAULT_MAX_PAYLOAD = 1024 * 1024
PROGRESS_SOURCE = "watcher-publish"


def message_size(headers: Mapping[str, str], body: bytes) -> int:
    """The bytes a message counts against the server's max_payload: the header block as
    nats-py writes it (``NATS/1.0``, one ``key: value`` line each, a blank line) and the body."""
    if not headers:
        return len(body)
    text = "".join(headers) + "".join(headers.values())
    # Header values are ASCII as a rule (CloudEvents attributes are percent-encoded): then
    # characters are bytes, and nothing needs encoding just to be counted.
    size = len(text) if text.isascii() else len(text.encode())
    return len(b"NATS/1.0\r\n\r\n") + size + 4 * len(headers) + len(body)


@dataclass
class Message:
    """One event or request, as published and, if it must be, dead-lettered."""

    subject: str  # '' when no valid subject could be made for it
    body: bytes
    headers: dict[str, str]
    event: str  # "<kind>.<change>" for an event, '' for a request
    key: ObjectKey  # the object it is about, named in its dead-letter record
    seq: int = 0  # its stream sequence once stored
    after: Message | None = None  # for a request: the event it follows


class Publisher:
    """Publishes events and requests for one watcher process.

    Each message is stored, or dead-lettered, before the watcher moves on: one that cannot
    be published (too large for the server, a subject over the bounds, refused by the server)
    goes to ``mcop.deadletter.watcher.<ns>.<name>`` with the reason, and so does one whose
    publish failed ``max_attempts`` times over at least ``give_up_after`` seconds while the
    connection was up, so that one bad object never blocks the others. Failures while
    disconnected are not counted: a message is dropped only when the dead-letter record was
    stored, and until then it is work waiting without progress (shared/runtime/progress.py).
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        nc: Client | None = None,
        worker: str = "",
        batch: int = 256,
        batch_bytes: int = BATCH_BYTES,
        max_attempts: int = 5,
        give_up_after: float = 30.0,
        progress: Progress = TRACKER,
    ) -> None:
        self.js = js
        self.nc = nc
        self.worker = worker
        self.batch = batch
        self.batch_bytes = batch_bytes
        self.max_attempts = max_attempts
        self.give_up_after = give_up_after
        self._progress = progress
        self._unsettled = 0
        self._pending: list[tuple[Message, asyncio.Future[Any]]] = []
        # Requests waiting for the events before them to be stored (see the module docstring).
        self._requests: list[Message] = []
        self._events: list[Message] = []
        self._event_bytes = 0  # the bodies' of _events
        self._last_event: Message | None = None
        self._flushing = asyncio.Lock()

    def _waiting(self, delta: int) -> None:
        self._unsettled += delta
        self._progress.waiting(PROGRESS_SOURCE, self._unsettled)

    def _settled(self) -> None:
        self._waiting(-1)
        self._progress.progressed()

    def _max_payload(self) -> int:
        return int(self.nc.max_payload) if self.nc is not None else DEFAULT_MAX_PAYLOAD

    def _connected(self) -> bool:
        return self.nc is None or bool(self.nc.is_connected)

    async def send(self, message: Message) -> None:
        """Queue ``message`` for the next flush, which publishes it after every message sent
        before it (a request: once the events before it are stored)."""
        self._waiting(+1)
        if not message.event and message.subject:
            message.after = self._last_event
            self._requests.append(message)
            if len(self._requests) >= self.batch:
                await self.flush()
            return
        self._last_event = message
        self._events.append(message)
        self._event_bytes += len(message.body)
        if len(self._events) >= self.batch or self._event_bytes >= self.batch_bytes:
            await self.flush()

    async def _pipeline(self, message: Message) -> None:
        """Publish without waiting for the ack (called from :meth:`flush`, under its lock)."""
        size = message_size(message.headers, message.body)
        if size > self._max_payload():
            # The server would close the connection (nats-py counts the body only): never send.
            # What is pending is settled first, so the order per object holds.
            await self._confirm()
            await self._store(
                message,
                refused=(
                    MESSAGE_TOO_LARGE,
                    f"{size} bytes with headers; the server takes {self._max_payload()}",
                ),
            )
            return
        try:
            future = await self.js.publish_async(
                message.subject, message.body, headers=message.headers
            )
        except Exception as err:
            # Disconnected, or the client's buffer is full: settle what is pending first so
            # the order per object holds, then publish this one synchronously.
            log.warning(
                "pipelined publish to %s refused (%s); publishing in order", message.subject, err
            )
            await self._confirm()
            await self._store(message)
            return
        self._pending.append((message, future))

    async def run_flusher(self, interval: float = FLUSH_INTERVAL) -> None:
        """Publish what is queued, and confirm it, every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            if self._events or self._pending or self._requests:
                await self.flush()

    async def flush(self) -> None:
        """Wait until every pipelined publish is stored; re-send, in order, from the first
        that failed (the message ids make re-sends of stored messages harmless). One flush at
        a time, so a later batch is never confirmed before an earlier one is re-sent."""
        async with self._flushing:
            # Both taken at once: a request queued while this flush waits has its event in
            # the next flush, which must store that event before publishing the request.
            events, self._events = self._events, []
            self._event_bytes = 0
            requests, self._requests = self._requests, []
            for message in events:
                await self._pipeline(message)
            await self._confirm()
            if not requests:
                return
            for message in requests:
                # Its event is stored now (or dead-lettered): reads must include it.
                seq = message.after.seq if message.after is not None else 0
                message.after = None
                message.headers.update(state.after_header(seq))
                await self._pipeline(message)
            await self._confirm()

    async def _confirm(self) -> None:
        """Wait for the pipelined publishes (the caller holds the flush lock).

        One wait for the whole batch, bounded (an ack lost with a dropped connection would
        otherwise stall the watcher for good; the re-send below is harmless if the message was
        stored): its acks arrive together, and waiting for each in turn cost two event-loop
        turns and a timer per message."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        futures = [future for _, future in pending]
        if not all(future.done() for future in futures):
            await asyncio.wait(futures, timeout=ACK_TIMEOUT, return_when=asyncio.FIRST_EXCEPTION)
        failed_from: int | None = None
        for i, (message, future) in enumerate(pending):
            if not future.done():
                log.warning("publish failed, will resend: no ack within %.0f s", ACK_TIMEOUT)
                failed_from = i
                break
            err = future.exception() if not future.cancelled() else asyncio.CancelledError()
            if err is not None:
                log.warning("publish failed, will resend: %s", err)
                failed_from = i
                break
            self._count(future.result(), message)
            self._settled()
        if failed_from is None:
            return
        resend = pending[failed_from:]
        for _, future in resend:
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # seen: the message is re-sent below
        await self._resend([message for message, _ in resend])

    async def _resend(self, messages: list[Message]) -> None:
        """Re-send, in order, messages whose publish failed or is unknown, losing no change and
        keeping the newest event of each object the newest of its subject. Messages after a
        failed one may be stored already (a node died between them; on a cluster the stream
        leader can change): re-sending an older modification behind them would make it the
        object's newest event, and the message id would drop the newer one's re-send. So the
        stream is asked, per object with several events here, which of them it holds last: a
        modification before that one is not re-sent (the stream cannot take it back in order;
        the newer state is stored), every other message is. An object's last event, when older
        ones of it were newly stored, is stored again under a new id if its first copy already
        is (the stream must end on the newest state)."""
        last = {m.subject: i for i, m in enumerate(messages) if m.event}
        resent: set[str] = set()  # subjects an older event was newly stored on just now
        stored_at: dict[str, int] = {}  # subject -> position here of its newest stored event
        for i, message in enumerate(messages):
            older = bool(message.event) and last[message.subject] != i
            if older and message.event.endswith(".modified"):
                if message.subject not in stored_at:
                    stored_at[message.subject] = await self._stored_position(
                        message.subject, messages
                    )
                if i < stored_at[message.subject]:
                    log.info("not re-sending %s: a newer event of it is stored", message.event)
                    self._settled()
                    continue
            again = bool(message.event) and not older and message.subject in resent
            if await self._store(message, again=again) and older:
                resent.add(message.subject)

    async def _stored_position(self, subject: str, messages: list[Message]) -> int:
        """Where in ``messages`` the newest event the stream holds on ``subject`` is; -1 when it
        holds none of them, or cannot say within a few tries (then everything is re-sent: a
        duplicate of the newest state rather than a lost change)."""
        ids = {m.headers.get(MSG_ID, ""): i for i, m in enumerate(messages) if m.subject == subject}
        for attempt in range(POSITION_TRIES):
            try:
                stored = await self.js.get_last_msg(EVENTS_STREAM, subject, direct=True)
            except NotFoundError:
                return -1
            except Exception as err:
                log.debug("could not read the newest event on %s: %r", subject, err)
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            msg_id = (stored.headers or {}).get(MSG_ID, "")
            if msg_id not in ids and "." in msg_id:
                # A copy stored again (see _store) has its first id plus ".<sequence>".
                msg_id = msg_id.rpartition(".")[0]
            return ids.get(msg_id, -1) if msg_id else -1
        return -1

    async def _store(
        self, message: Message, *, refused: tuple[str, str] | None = None, again: bool = False
    ) -> bool:
        """Publish ``message`` until it is stored; or, once it is known that it cannot be
        (``refused``: reason and detail), until its dead-letter record is. ``again``: when the
        stream already holds it, store it once more under a new message id (see _resend).
        Whether this call added it to the stream (not a duplicate, not dead-lettered)."""
        attempt = 0
        strikes: list[float] = []  # when publishes failed while connected
        while True:
            attempt += 1
            delay = min(5.0, 0.2 * 2**attempt)
            if refused is None:
                try:
                    ack = await self.js.publish(
                        message.subject, message.body, headers=message.headers, timeout=ACK_TIMEOUT
                    )
                except Exception as err:
                    refused = self._given_up(err, message, strikes)
                    if refused is None:
                        log.warning(
                            "publish to %s failed (%s); retrying in %.1fs",
                            message.subject,
                            err,
                            delay,
                        )
                        await asyncio.sleep(delay)
                        continue
                else:
                    if again and getattr(ack, "duplicate", False):
                        again = False
                        msg_id = message.headers.get(MSG_ID, "")
                        message.headers[MSG_ID] = f"{msg_id}.{ack.seq}"
                        log.info("storing %s again: older events of it were re-sent", msg_id)
                        continue
                    self._count(ack, message)
                    self._settled()
                    return not getattr(ack, "duplicate", False)
            if await self._dead_letter(message, refused[0], refused[1], attempts=attempt):
                self._settled()
                return False
            if refused[0] == PUBLISH_FAILED:
                refused = None  # try the message again, and the dead letter after its next failure
            await asyncio.sleep(delay)

    def _given_up(
        self, err: Exception, message: Message, strikes: list[float]
    ) -> tuple[str, str] | None:
        """After a failed publish: the dead-letter reason and detail if ``message`` is to be
        given up, else None (``strikes`` collects the failures while connected)."""
        reason = refusal(err, message.subject, self.nc.last_error if self.nc is not None else None)
        if reason:
            return reason, repr(err)
        if not self._connected():
            return None  # the connection's trouble, not the message's
        now = time.monotonic()
        strikes.append(now)
        if len(strikes) < self.max_attempts or now - strikes[0] < self.give_up_after:
            return None
        return (
            PUBLISH_FAILED,
            f"{len(strikes)} attempts failed over {now - strikes[0]:.0f}s while connected; "
            f"the last: {err!r}",
        )

    async def refuse(self, message: Message, reason: str, detail: str) -> None:
        """Dead-letter ``message``, known not to be publishable, after everything before it."""
        self._waiting(+1)
        await self.flush()
        await self._store(message, refused=(reason, detail))

    async def _dead_letter(
        self, message: Message, reason: str, detail: str, *, attempts: int
    ) -> bool:
        """Store ``message`` in the dead-letter stream with the reason; whether it was."""
        target, body, headers = dead_letter(
            subject=message.subject,
            body=message.body,
            headers=message.headers,
            key=message.key,
            reason=reason,
            detail=detail,
            attempts=attempts,
            worker=self.worker,
        )
        try:
            await self.js.publish(target, body, headers=headers, timeout=ACK_TIMEOUT)
        except Exception as err:
            log.error("could not dead-letter %s (will retry): %r", message.key, err)
            return False
        metrics.dead_lettered_total.labels(DEADLETTER_CONTROLLER, reason).inc()
        log.error(
            "dead-lettered %s about %s: %s: %s",
            "event " + message.event if message.event else "request",
            message.key,
            reason,
            header_text(detail),
        )
        return True

    def _count(self, ack: Any, message: Message) -> None:
        """Note a confirmed message's sequence, and count a confirmed event: stored, or
        dropped as a duplicate another replica (or an earlier run) stored first."""
        message.seq = int(getattr(ack, "seq", 0) or 0)
        event = message.event
        if not event:
            return
        kind, _, change = event.partition(".")
        if getattr(ack, "duplicate", False):
            DUPLICATES_DROPPED.labels(kind).inc()
        else:
            EVENTS_PUBLISHED.labels(kind, change).inc()

    async def request(
        self, controller: str, key: ObjectKey, headers: Mapping[str, str] | None = None
    ) -> None:
        try:
            subject = subjects.subject(subjects.REQUESTS, controller, key)
        except ValueError as err:
            log.error("no request for %s: %s", subjects.shown(str(key)), err)
            return
        await self.send(Message(subject, b"", dict(headers or {}), "", key))
        REQUESTS_PUBLISHED.labels(controller).inc()
        metrics.workqueue_adds_total.labels(controller).inc()
