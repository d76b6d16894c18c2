"""The newest message of several subjects of a stream in one round trip (a batched direct get).

A reconcile reads a CR and its Deployment from the event stream, a status refresh the CR, its
Deployment and the CR's newest outcome: with one direct get per subject that is two or three
requests, replies and futures per run, the largest share of what those services ask NATS for.
nats-server 2.11 and later answer one direct-get request for several subjects at once
(``multi_last``, ADR-31): a reply message per subject that has one, in stream order, then an
end-of-batch status message (204), or a single 404 when none has. The answer is also a
consistent snapshot: every message is the newest as of one stream sequence.

nats-py has no call for a request with several replies, so :class:`DirectGetter` keeps one
subscription on a private inbox prefix per connection and routes each reply by the token of
its request. Against a server that does not know ``multi_last`` (it reads the request as an
empty one: "408 Empty Request") it falls back to one ``get_last_msg`` per subject for the life
of the connection; when the first batch on a connection gets no answer (the NATS user may
publish the per-subject direct gets only), it reads one subject at a time for a minute and then
tries a batch again.

Read-your-writes on a replicated stream. A direct get is answered by any replica of the stream,
the leader or a follower, and a follower may not yet hold what the leader acknowledged a moment
ago (an R3 stream acknowledges once two of three replicas stored a message). A caller that knows
the stream sequence its read must include (``at_least``: the request carries the sequence of
the event that caused it, see shared/events/state.py) gets an answer only from a replica that
has it: every batched answer says up to which sequence it is (``Nats-UpTo-Sequence``), and one
from a replica still behind is asked again (another replica may answer), then reported as a
transient failure (the request is retried later). On a stream of one replica every answer is
current, so the barrier is skipped there; an answer with nothing in it carries no sequence, so it
is asked again only briefly (EMPTY_RETRIES) and then believed. Reads that may be stale (a
lease's current holder before a compare-and-set write, whether a newer request is waiting) need
no barrier.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from memcached_operator.shared.bus import connection
from memcached_operator.shared.runtime.errors import TransientError

log = logging.getLogger("memcached_operator.directget")

_STATUS = "Status"
_END_OF_BATCH = "204"
_NO_RESULTS = "404"
_SUBJECT = "Nats-Subject"
_SEQUENCE = "Nats-Sequence"
_UP_TO = "Nats-UpTo-Sequence"
# How often a batch answered by a replica behind ``at_least`` is asked again, and the waits
# between (seconds): about 1.5 s in all, far more than a follower lags in a healthy cluster.
BEHIND_RETRIES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.4)
# An answer with nothing in it says nothing about the replica's position (a "no results" reply
# carries no sequence): asked again only this often (about 80 ms), then believed. Subjects
# without messages are common (a deleted CR's, events aged out of a small stream): waiting
# the full 1.5 s on each of them stalled the status service behind a deleted namespace.
EMPTY_RETRIES = BEHIND_RETRIES[:4]
# How long a stream's replica count is remembered (it only matters whether there is more than
# one: a stream of one replica has no replica that is behind).
REPLICAS_TTL = 60.0


class ReplicaBehind(TransientError):
    """Every answer came from a replica that does not yet hold the sequence asked for."""


@dataclass(frozen=True)
class StoredMsg:
    """One message as the stream stores it: subject, sequence, headers (the publisher's, with
    the stream's ``Nats-*`` ones) and body."""

    subject: str
    seq: int
    headers: dict[str, str]
    data: bytes


class DirectGetter:
    """Batched direct gets on one connection; get one with :meth:`of`."""

    RETRY_BATCH_AFTER = 60.0  # seconds one subject at a time after an unanswered first batch

    # Keyed weakly by connection; a getter holds its connection weakly too, so neither keeps
    # the other alive.
    _by_client: weakref.WeakKeyDictionary[Client, DirectGetter] = weakref.WeakKeyDictionary()

    def __init__(self, nc: Client, *, timeout: float = 5.0) -> None:
        self._nc = weakref.ref(nc)
        self._timeout = timeout
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count(1)
        self._waiting: dict[str, tuple[list[Msg], asyncio.Future[list[Msg]]]] = {}
        self._up_to: dict[str, int] = {}  # by token: the end-of-batch's Nats-UpTo-Sequence
        self._sub: Subscription | None = None
        self._subscribing: asyncio.Lock = asyncio.Lock()
        self.batched = True  # False once the server answered that it has no batches
        self._answered = False  # a batch was answered on this connection
        self._batch_after = 0.0  # loop time before which reads go one subject at a time
        self._replicated: dict[str, tuple[bool, float]] = {}  # stream -> (R > 1, loop time)

    @classmethod
    def of(cls, js: JetStreamContext) -> DirectGetter:
        """The getter of the connection behind ``js`` (made on first use)."""
        nc = connection.client_of(js)
        getter = cls._by_client.get(nc)
        if getter is None:
            getter = cls._by_client[nc] = cls(nc)
        return getter

    async def last_msgs(
        self, js: JetStreamContext, stream: str, subjects: Sequence[str], *, at_least: int = 0
    ) -> dict[str, StoredMsg]:
        """The newest message of each of ``subjects`` that has one, by subject, as of stream
        sequence ``at_least`` or later (see the module docstring)."""
        if not subjects:
            return {}
        loop = asyncio.get_running_loop()
        if self.batched and loop.time() >= self._batch_after:
            try:
                found = await self._fresh_batch(js, stream, subjects, at_least)
            except _Unsupported as err:
                log.warning(
                    "this NATS server does not answer batched direct gets (%s); "
                    "reading one subject at a time (nats-server 2.11+ does it in one request)",
                    err,
                )
                self.batched = False
            except _NoAnswer as err:
                if self._answered:
                    raise TransientError(str(err)) from None
                # Never answered on this connection: a NATS user allowed the per-subject
                # direct gets but not the batched one (a permission violation is reported to
                # the connection, not to the request), or a server still starting. Read this
                # one subject at a time, and try a batch again later.
                log.warning(
                    "%s; reading one subject at a time for %.0fs (may this NATS user publish "
                    "to $JS.API.DIRECT.GET.%s?)",
                    err,
                    self.RETRY_BATCH_AFTER,
                    stream,
                )
                self._batch_after = loop.time() + self.RETRY_BATCH_AFTER
            else:
                self._answered = True
                return found
        return await _one_by_one(js, stream, subjects)

    async def _fresh_batch(
        self, js: JetStreamContext, stream: str, subjects: Sequence[str], at_least: int
    ) -> dict[str, StoredMsg]:
        """A batch from a replica holding sequence ``at_least``, asking again while the answer
        comes from one behind it. On a stream of one replica every answer is current."""
        if at_least > 0 and not await self._is_replicated(js, stream):
            at_least = 0
        up_to = 0
        found: dict[str, StoredMsg] = {}
        for attempt, wait in enumerate(BEHIND_RETRIES):
            if wait:
                await asyncio.sleep(wait)
            found, up_to = await self._batch(js, stream, subjects)
            if at_least <= 0 or up_to >= at_least:
                return found
            if found and up_to == 0:
                return found  # a server that does not say up to where: nothing to check
            if not found and attempt + 1 >= len(EMPTY_RETRIES):
                # Nothing, asked a few times: the subjects have no messages (see EMPTY_RETRIES).
                return found
        raise ReplicaBehind(
            f"direct get on {stream}: the replicas that answered hold up to sequence {up_to}, "
            f"this read needs {at_least}"
        )

    async def _is_replicated(self, js: JetStreamContext, stream: str) -> bool:
        """Whether ``stream`` has more than one replica (remembered for REPLICAS_TTL; when its
        info cannot be read, assumed so: then the barrier holds)."""
        now = asyncio.get_running_loop().time()
        known = self._replicated.get(stream)
        if known is not None and now - known[1] < REPLICAS_TTL:
            return known[0]
        try:
            info = await js.stream_info(stream)
            replicated = (info.config.num_replicas or 1) > 1
        except Exception as err:
            log.debug("could not read the info of stream %s: %r", stream, err)
            replicated = True
        self._replicated[stream] = (replicated, now)
        return replicated

    async def _batch(
        self, js: JetStreamContext, stream: str, subjects: Sequence[str]
    ) -> tuple[dict[str, StoredMsg], int]:
        """The batch's messages by subject, and the sequence the answer is as of (0: unsaid)."""
        token = str(next(self._tokens))
        done: asyncio.Future[list[Msg]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = ([], done)
        body = json.dumps({"multi_last": list(subjects), "batch": len(subjects)}).encode()
        prefix = connection.api_prefix(js)
        try:
            nc = self._nc()
            if nc is None:
                raise TransientError("the NATS connection is gone")
            await self._subscribe(nc)
            await nc.publish(f"{prefix}.DIRECT.GET.{stream}", body, reply=f"{self._prefix}.{token}")
            msgs = await asyncio.wait_for(done, timeout=self._timeout)
        except TimeoutError:
            raise _NoAnswer(
                f"no answer from NATS to a batched direct get on {stream} within {self._timeout}s"
            ) from None
        except (TransientError, _Unsupported):
            raise
        except Exception as err:
            raise TransientError(f"direct get on {stream}: {err!r}") from err
        finally:
            self._waiting.pop(token, None)
            up_to = self._up_to.pop(token, 0)
        found: dict[str, StoredMsg] = {}
        for msg in msgs:
            headers = dict(msg.headers or {})
            subject = headers.get(_SUBJECT, "")
            up_to = max(up_to, _sequence(headers.get(_UP_TO)))
            found[subject] = StoredMsg(
                subject, _sequence(headers.get(_SEQUENCE)), headers, msg.data or b""
            )
        return found, up_to

    async def _subscribe(self, nc: Client) -> None:
        if self._sub is not None:
            return
        async with self._subscribing:
            if self._sub is None:
                self._sub = await nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        entry = self._waiting.get(token)
        if entry is None:
            return  # the caller gave up (timeout)
        replies, done = entry
        if done.done():
            return
        status = (msg.headers or {}).get(_STATUS)
        if status is None:
            replies.append(msg)
            return
        text = f"status {status} {_description(msg.headers or {})}".strip()
        if status == _END_OF_BATCH:
            # It says up to which sequence the answer is (its messages say so too).
            self._up_to[token] = _sequence((msg.headers or {}).get(_UP_TO))
            done.set_result(replies)
        elif status == _NO_RESULTS and not replies and "no results" in text.lower():
            done.set_result([])
        elif status == "400" or (status == "408" and "empty" in text.lower()):
            # A server without multi_last reads the request as an empty one.
            done.set_exception(_Unsupported(text))
        else:
            # 503: the stream is not available; a 404 after some messages: one went away
            # while the batch was read (the answer would be incomplete). Passing, either way.
            done.set_exception(TransientError(f"batched direct get: {text}"))


async def _one_by_one(
    js: JetStreamContext, stream: str, subjects: Sequence[str]
) -> dict[str, StoredMsg]:
    async def one(subject: str) -> StoredMsg | None:
        try:
            raw = await js.get_last_msg(stream, subject, direct=True)
        except NotFoundError:
            return None
        except Exception as err:
            raise TransientError(f"reading {subject} from {stream}: {err}") from err
        return StoredMsg(subject, int(raw.seq or 0), dict(raw.headers or {}), raw.data or b"")

    found = await asyncio.gather(*(one(s) for s in subjects))
    return {m.subject: m for m in found if m is not None}


class _Unsupported(Exception):
    """The server does not know batched direct gets."""


class _NoAnswer(Exception):
    """No answer to a batched direct get in time."""


def _sequence(text: str | None) -> int:
    """A stream sequence from a header; 0 when missing or not a plain number of sane length."""
    if not text or len(text) > 20 or not (text.isascii() and text.isdigit()):
        return 0
    return int(text)


def _description(headers: dict[Any, str]) -> str:
    for name, value in headers.items():
        if str(name).lower().endswith("description"):
            return value
    return ""


async def last_msgs(
    js: JetStreamContext, stream: str, subjects: Sequence[str], *, at_least: int = 0
) -> dict[str, StoredMsg]:
    """The newest message of each of ``subjects`` on ``stream`` that has one, in one request,
    from a replica that holds stream sequence ``at_least`` (0: any replica)."""
    return await DirectGetter.of(js).last_msgs(js, stream, subjects, at_least=at_least)
