"""Per-object leases in the ``mcop-leases`` KV bucket: no two runs of one object overlap.

A run creates its object's lease key before it starts (a create fails while another run
holds it), refreshes it while its handler runs (compare-and-swap on the revision), and
deletes it afterwards (again only at its own revision). Every write carries a TTL, so the
lease of a killed worker frees itself; so does the delete marker a release leaves, after a
second, so that the next run of the object creates the key again in one round trip (one that
comes sooner trips over the marker and creates the key at the marker's revision).

A release is published without asking for JetStream's acknowledgement: nothing waits on it,
and the run's slot is free one round trip sooner. If it is lost (a node of the bucket dying) or
refused (the lease was no longer this run's), the lease frees itself at its TTL, as it did when
a release failed while it was acknowledged. The next request on this connection reaches the
bucket after it, so a run in this process that retakes the lease finds it released.

The marker also says which request's run released it: its stream sequence, in the header
``Mcop-Ran-Sequence``. A request delivered before a newer one of the same object replaced it,
and which reaches the lease only after that newer one has run, finds the marker (its own
process's memory of its releases, :class:`Markers`, or the one its first create trips over)
and learns it is :class:`Overtaken`: that run started after this request was published, so
this one lets go instead of running after it.

The decisions are pure objects with an injected clock (:class:`Markers`, :func:`conflict`,
:class:`WaitSchedule`, :class:`Held`); :class:`Leases` is the thin part that talks to NATS.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from memcached_operator.shared.bus.streams import LEASES_STREAM, LEASES_SUBJECT_PREFIX

Clock = Callable[[], float]

# JetStream's optimistic concurrency: a publish that expects the subject's last sequence, and
# the error codes of a wrong expectation (the stream's and the KV's).
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = (10071, 10164)
KV_OPERATION = "KV-Operation"

MARKER_TTL = 1.0  # seconds a release's delete marker stays in the bucket
# On a release's delete marker: the stream sequence of the request whose run released it.
RAN_SEQUENCE = "Mcop-Ran-Sequence"


class LeaseLost(Exception):
    """The lease expired or was taken by another worker while its holder was running."""


@dataclass
class Held:
    """A lease this worker holds for one run: the revision to refresh or release at.

    ``lost`` once a refresh found it gone (the run is cancelled and must not release it);
    ``waited`` when another run held it first (a newer request may have arrived meanwhile).
    """

    name: str
    revision: int
    value: bytes
    lost: bool = False
    waited: bool = False


@dataclass(frozen=True)
class Overtaken:
    """The lease's marker shows that a run of a newer request of the object (stream sequence
    ``ran``) has ended: it started after this request was published, so this one is done."""

    ran: int


def overtaken(ran: int | str | None, sequence: int) -> Overtaken | None:
    """Whether a marker's run (``ran``, as stored; None or junk for none) was of a newer
    request than ``sequence`` (0: unknown, never overtaken)."""
    try:
        ran_ = int(ran or 0)
    except ValueError:
        return None
    return Overtaken(ran_) if sequence > 0 and ran_ > sequence else None


class Markers:
    """The delete markers this process's releases left that may still be in the bucket, by
    lease name: the sequence of the request whose run left each."""

    def __init__(self, *, ttl: float = MARKER_TTL, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        # name -> (time written, request sequence of the run), oldest first.
        self._markers: dict[str, tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._markers)

    def ran(self, name: str) -> int:
        """The request sequence of the run that left the marker of ``name`` (0 when none, or
        it expired)."""
        marker = self._markers.get(name)
        if marker is None or self._clock() - marker[0] >= self.ttl:
            return 0
        return marker[1]

    def wrote(self, name: str, *, ran: int = 0) -> None:
        """A release of ``name`` left a marker, after a run of request ``ran``."""
        now = self._clock()
        # Oldest first (insertion order): forget the expired ones, which are gone from the
        # bucket too, so this holds only the last second's releases.
        for old, (written, _) in list(self._markers.items()):
            if now - written < self.ttl:
                break
            del self._markers[old]
        self._markers.pop(name, None)
        self._markers[name] = (now, ran)


def conflict(kv_operation: str | None, sequence: int) -> int | None:
    """After a create found the key present: the revision to expect on the next try when the
    key is only a delete marker, None when a live lease holds it."""
    if kv_operation in ("DEL", "PURGE"):
        return sequence
    return None


class WaitSchedule:
    """How a worker waits for a lease another run holds: polls from 20 ms doubling to a
    quarter of the TTL (at most 0.5 s), each jittered to 50-150 %, and an in-progress ack
    every third of the ack wait so that the request is not redelivered meanwhile."""

    FIRST_POLL = 0.02

    def __init__(
        self,
        *,
        ttl: float,
        ack_wait: float,
        clock: Clock = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._poll = self.FIRST_POLL
        self._cap = min(0.5, ttl / 4)
        self._progress_every = ack_wait / 3
        self._clock = clock
        self._jitter = jitter
        self._last_progress = clock()

    def progress_due(self) -> bool:
        """Whether an in-progress ack is due now (if so, the next one is a period from now)."""
        now = self._clock()
        if now - self._last_progress < self._progress_every:
            return False
        self._last_progress = now
        return True

    def next_poll(self) -> float:
        """Seconds to wait before the next try."""
        wait = self._poll * (0.5 + self._jitter())
        self._poll = min(self._poll * 2, self._cap)
        return wait


class LeaseStore(Protocol):
    """What a run does with its object's lease: :class:`Leases` (the fleet's, in the lease
    bucket) or process_lease.py's ``ProcessLeases`` (this process's only)."""

    ttl: float

    async def try_acquire(
        self, name: str, value: bytes, *, sequence: int = 0
    ) -> int | Overtaken | None: ...

    async def refresh(self, name: str, revision: int, value: bytes) -> int: ...

    async def release(self, name: str, revision: int, *, ran: int = 0) -> None: ...


class Leases:
    """Create-if-absent, compare-and-swap and delete on the lease bucket, each with a TTL."""

    MARKER_TTL = MARKER_TTL

    def __init__(
        self, nc: Client, js: JetStreamContext, *, ttl: float, clock: Clock = time.monotonic
    ) -> None:
        self._nc = nc
        self._js = js
        self.ttl = ttl
        self._ttl_header = f"{max(1, math.ceil(ttl))}s"
        self._markers = Markers(ttl=self.MARKER_TTL, clock=clock)

    async def try_acquire(
        self, name: str, value: bytes, *, sequence: int = 0
    ) -> int | Overtaken | None:
        """The new lease revision; None when another run holds the lease; :class:`Overtaken`
        when the marker a release left shows a run of a newer request than ``sequence`` (the
        stream sequence of the request this run would be for; 0: unknown)."""
        subject_ = LEASES_SUBJECT_PREFIX + name
        newer = overtaken(self._markers.ran(name), sequence)
        if newer is not None:
            return newer
        expected: int | None = 0
        for _ in range(3):
            assert expected is not None
            try:
                return await self._write(subject_, value, expected)
            except APIError as err:
                if err.err_code not in WRONG_LAST_SEQUENCE:
                    raise
            # The key exists: a live lease, or the marker a released one leaves behind.
            try:
                current = await self._js.get_last_msg(LEASES_STREAM, subject_, direct=True)
            except NotFoundError:
                expected = 0  # expired in between
                continue
            headers = current.headers or {}
            expected = conflict(headers.get(KV_OPERATION), current.seq or 0)
            if expected is None:
                return None
            newer = overtaken(headers.get(RAN_SEQUENCE), sequence)
            if newer is not None:
                return newer
        return None

    async def refresh(self, name: str, revision: int, value: bytes) -> int:
        try:
            return await self._write(LEASES_SUBJECT_PREFIX + name, value, revision)
        except APIError as err:
            if err.err_code in WRONG_LAST_SEQUENCE:
                raise LeaseLost(name) from None
            raise

    async def release(self, name: str, revision: int, *, ran: int = 0) -> None:
        """Delete the lease at ``revision``, leaving a marker that says the run was of request
        ``ran`` (its stream sequence); unacknowledged (see the module docstring)."""
        headers = {
            KV_OPERATION: "DEL",
            EXPECTED_LAST_SUBJECT_SEQ: str(revision),
            "Nats-TTL": f"{math.ceil(self.MARKER_TTL)}s",
        }
        if ran:
            headers[RAN_SEQUENCE] = str(ran)
        await self._nc.publish(LEASES_SUBJECT_PREFIX + name, b"", headers=headers)
        self._markers.wrote(name, ran=ran)

    async def _write(self, subject_: str, value: bytes, expected: int) -> int:
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(expected), "Nats-TTL": self._ttl_header}
        ack = await self._js.publish(subject_, value, headers=headers)
        return ack.seq
