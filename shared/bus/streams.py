"""The JetStream streams and the KV bucket the pipeline runs on, and how they are created.

Four stores, each with one job: the events stream is the audit log (every watched change and
every reconcile outcome, kept for days, readable per subject with direct gets); the requests
stream is the work queue (WorkQueue retention, one message per subject so that pending
requests for one object coalesce); the dead-letter stream keeps the requests the queue gave up
on, with the reason; the ``mcop-leases`` bucket holds the short-lived per-object leases that
make reconciles of one object exclusive across the fleet. :func:`ensure_streams` creates them
or brings an existing one to this configuration, and is safe to call from every process at
start-up, concurrently.

Bounded. Every store has a ``max_bytes``: a share of one budget (``--stream-max-bytes``, env
STREAM_MAX_BYTES, default 8 GiB), sized for the 10 GiB volume of deploy/base whose nats.conf
allows a 9 GiB file store, leaving 1 GiB for JetStream's own state and anything an operator
adds. NATS reserves each stream's ``max_bytes`` at creation, so the budget (times the
replicas, per server) must fit the server's ``max_file_store``; when it does not, creation
fails with a :class:`StreamLimitsError` naming the flag. The split, in 64ths of the budget:

- events 48 (6 GiB by default): the bulk of what is written, and what the budget is for.
  Discard **old**: when full, the oldest records go first (the audit trail is a window of the
  latest history, as it already is by age). The stream is also the informer cache (the newest
  event per object) and holds the newest outcome per CR; a service that finds no event for an
  object does what it does for one the stream never saw (reads the API server, or applies
  without force), as it already must after ``max_age``. Each object keeps at most its newest
  ``max_msgs_per_subject`` records (``--events-per-object``, default 1,000): one object
  changed in a loop (a tenant's script, a controller fighting ours) then evicts only its own
  oldest records, not every other object's history from the shared budget.
- requests 8 (1 GiB, about a million pending requests): discard **new**. Discard old would
  silently drop the oldest pending request, an object that then waits for the next resync;
  discard new refuses a request for one more object while full (a 503 the publisher retries as
  a transient failure) until the workers drain the queue. (Even a newer request for an object
  that has one waiting may then be refused: NATS replaces under discard new only when that
  makes room. It is refused, not lost.)
- dead letters 6 (768 MiB): discard **old**. The newest evidence matters most, and a full
  dead-letter stream must never refuse a dead letter: the queue would keep retrying the
  poison request it failed to record.
- leases 2 (256 MiB): discard **new**, the KV convention: a lease is never dropped to make
  room; a full bucket refuses a new lease, a transient failure retried later.

Outcomes live on the events stream; the reconciler publishes none when a reconcile changed
nothing and the stream already holds the same outcome (services/reconciler/reconcile.py).

Hand-set limits stay. :func:`ensure_stream` never changes a limit (``max_bytes``, ``max_age``,
``max_msgs``, ``max_msg_size``) that an existing stream already has: lowering one would delete
what an operator chose to keep, raising one would undo a limit an operator lowered by hand
(``nats stream edit``). It only adds a limit the stream lacks (a stream created before the limit
existed), logs each difference it keeps, and sets the other fields this code relies on
(subjects, retention, discard, direct gets...).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Collection
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from memcached_operator.shared.bus.subjects import DEADLETTER, EVENTS, OUTCOMES, PREFIX, REQUESTS

log = logging.getLogger(__name__)

EVENTS_STREAM = "MCOP_EVENTS"
REQUESTS_STREAM = "MCOP_REQUESTS"
DEADLETTER_STREAM = "MCOP_DEADLETTER"
LEASES_BUCKET = "mcop-leases"
# A KV bucket is a stream with this name and subject prefix (the NATS KV convention).
LEASES_STREAM = f"KV_{LEASES_BUCKET}"
LEASES_SUBJECT_PREFIX = f"$KV.{LEASES_BUCKET}."

DAY = 24 * 60 * 60.0
DEFAULT_EVENTS_MAX_AGE = 7 * DAY
# Records the events stream keeps per object (per subject: one object of one kind, or one CR's
# outcomes); the oldest of an object go first.
DEFAULT_EVENTS_PER_OBJECT = 1000
REQUESTS_MAX_AGE = 1 * DAY
DEADLETTER_MAX_AGE = 30 * DAY
EVENTS_DUPLICATE_WINDOW = 10 * 60.0
# Upper bound for any lease: a lease also carries its own, possibly shorter, per-message TTL.
DEFAULT_LEASE_TTL = 30.0

# JSStreamNameExistErr: the stream exists with another configuration.
_STREAM_EXISTS_DIFFERENTLY = 10058
# JSStorageResourcesExceededErr: the server cannot reserve max_bytes in its store.
_INSUFFICIENT_STORAGE = 10047

KiB, MiB, GiB = 1024, 1024**2, 1024**3
DEFAULT_MAX_BYTES = 8 * GiB
# Each store's share of the budget, in 64ths (see the module docstring).
_SHARES_OF_64 = {EVENTS_STREAM: 48, REQUESTS_STREAM: 8, DEADLETTER_STREAM: 6, LEASES_STREAM: 2}
# Fields that are limits an operator may tune by hand: ensure_stream never changes a set one.
LIMITS = ("max_bytes", "max_age", "max_msgs", "max_msg_size")
# The events stream's per-object cap is a limit too; on the requests stream and the lease
# bucket one message per subject is what the code relies on, not a limit.
EVENTS_LIMITS = (*LIMITS, "max_msgs_per_subject")
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3}
_UNITS |= {"gb": 1000**3, "t": 1000**4, "tb": 1000**4}
_UNITS |= {"ki": KiB, "kib": KiB, "mi": MiB, "mib": MiB, "gi": GiB, "gib": GiB}
_UNITS |= {"ti": 1024**4, "tib": 1024**4}


class StreamLimitsError(RuntimeError):
    """The server cannot hold the streams' ``max_bytes``: not worth retrying at start-up."""


def parse_bytes(text: str) -> int:
    """A size such as ``8GiB``, ``512MiB``, ``300KB`` or ``1048576`` (bytes), as an int."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 8GiB, 512MiB, 300KB or bytes)")
    return int(float(match.group(1)) * unit)


def stream_max_bytes(stream: str, budget: int = DEFAULT_MAX_BYTES) -> int:
    """The ``max_bytes`` of ``stream``: its share of ``budget``."""
    return max(1, budget * _SHARES_OF_64[stream] // 64)


def _file_stream(
    name: str, job: str, subjects: list[str], *, replicas: int, max_bytes: int, **policy: Any
) -> api.StreamConfig:
    """A file-backed stream of the pipeline: what every store shares, and its own ``policy``."""
    return api.StreamConfig(
        name=name,
        description=f"memcached-operator: {job}",
        subjects=subjects,
        max_bytes=max_bytes,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        **policy,
    )


def events_config(
    *,
    replicas: int = 1,
    max_age: float = DEFAULT_EVENTS_MAX_AGE,
    max_bytes: int = stream_max_bytes(EVENTS_STREAM),
    per_object: int = DEFAULT_EVENTS_PER_OBJECT,
) -> api.StreamConfig:
    """The audit log and informer cache: watched changes and outcomes (see the module
    docstring); ``max_age`` and ``per_object`` are the admin step's settings
    (--events-max-age, --events-per-object)."""
    return _file_stream(
        EVENTS_STREAM,
        "watched changes and reconcile outcomes (audit, replay)",
        [f"{PREFIX}.{EVENTS}.>", f"{PREFIX}.{OUTCOMES}.>"],
        replicas=replicas,
        max_bytes=max_bytes,
        retention=api.RetentionPolicy.LIMITS,
        max_age=max_age,
        # One object's churn evicts its own oldest records, not others' (module docstring).
        max_msgs_per_subject=per_object,
        # The oldest audit records go first (see the module docstring).
        discard=api.DiscardPolicy.OLD,
        duplicate_window=min(EVENTS_DUPLICATE_WINDOW, max_age),
        allow_direct=True,
    )


def requests_config(
    *, replicas: int = 1, max_bytes: int = stream_max_bytes(REQUESTS_STREAM)
) -> api.StreamConfig:
    return _file_stream(
        REQUESTS_STREAM,
        "reconcile requests, one pending per object",
        [f"{PREFIX}.{REQUESTS}.>"],
        replicas=replicas,
        max_bytes=max_bytes,
        retention=api.RetentionPolicy.WORK_QUEUE,
        # A newer request for an object replaces the waiting one (discard old, per subject).
        max_msgs_per_subject=1,
        max_age=REQUESTS_MAX_AGE,
        # When full, refuse a request for one more object rather than drop a pending one.
        discard=api.DiscardPolicy.NEW,
        # The work queue asks "is a newer request for this subject waiting?" before it runs.
        allow_direct=True,
    )


def deadletter_config(
    *, replicas: int = 1, max_bytes: int = stream_max_bytes(DEADLETTER_STREAM)
) -> api.StreamConfig:
    return _file_stream(
        DEADLETTER_STREAM,
        "requests the work queue gave up on, with the reason",
        [f"{PREFIX}.{DEADLETTER}.>"],
        replicas=replicas,
        max_bytes=max_bytes,
        retention=api.RetentionPolicy.LIMITS,
        max_age=DEADLETTER_MAX_AGE,
        # Never refuse a dead letter (the queue would retry the poison request for ever).
        discard=api.DiscardPolicy.OLD,
        # `kubectl memcached dlq` and `explain` read dead letters by subject as the audit user,
        # whose account may make direct gets only (services/admin/nats_auth.py).
        allow_direct=True,
    )


def leases_config(
    *,
    replicas: int = 1,
    ttl: float = DEFAULT_LEASE_TTL,
    max_bytes: int = stream_max_bytes(LEASES_STREAM),
) -> api.StreamConfig:
    """The ``mcop-leases`` KV bucket, spelled out as its stream (as ``nats kv add`` makes it)."""
    return _file_stream(
        LEASES_STREAM,
        "per-object reconcile leases",
        [f"{LEASES_SUBJECT_PREFIX}>"],
        replicas=replicas,
        max_bytes=max_bytes,
        retention=api.RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,  # history 1
        max_age=ttl,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=min(120.0, ttl),
        allow_rollup_hdrs=True,
        deny_delete=True,
        allow_direct=True,
        # Each lease write sets Nats-TTL, so a queue can use a TTL shorter than the bucket's.
        allow_msg_ttl=True,
        max_consumers=-1,
        max_msgs=-1,
    )


def _unlimited(value: Any) -> bool:
    # NATS reports "no limit" as -1 (0 for max_age); None is a field the server left out.
    return value is None or value in (-1, 0)


def _same(current: Any, ours: Any) -> bool:
    if isinstance(ours, float) or isinstance(current, float):
        # Durations go through nanoseconds on the wire.
        return current is not None and abs(float(current) - float(ours)) < 1e-3
    if isinstance(ours, list) and isinstance(current, list):
        return sorted(map(str, current)) == sorted(map(str, ours))
    return bool(current == ours)


def _storage_error(config: api.StreamConfig, err: APIError) -> StreamLimitsError:
    return StreamLimitsError(
        f"NATS cannot reserve max_bytes={config.max_bytes} for stream {config.name} "
        f"({err.description}): lower --stream-max-bytes (env STREAM_MAX_BYTES, the budget of "
        "all the streams) or raise the server's jetstream max_file_store"
    )


async def ensure_stream(
    js: JetStreamContext,
    config: api.StreamConfig,
    *,
    update: bool = True,
    limits: Collection[str] = LIMITS,
) -> api.StreamInfo:
    """Create the stream; when it exists with another configuration, add the ``limits`` it
    lacks (never changing one it has, see the module docstring), set the other fields to ours
    if ``update`` (the service that owns them), and log every difference it keeps."""
    name = str(config.name)
    try:
        # Looked up first: NATS checks that it can reserve max_bytes before it checks whether
        # the stream exists, so adding an existing stream can fail for want of storage.
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            return await js.add_stream(config)
        except APIError as err:
            if err.err_code not in (_STREAM_EXISTS_DIFFERENTLY, _INSUFFICIENT_STORAGE):
                raise
            try:
                info = await js.stream_info(name)  # created meanwhile by another process
            except NotFoundError:
                if err.err_code == _INSUFFICIENT_STORAGE:
                    raise _storage_error(config, err) from err
                raise
    current = info.config
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        ours, theirs = getattr(config, field.name), getattr(current, field.name)
        if field.name == "name" or ours is None or _same(theirs, ours):
            continue
        if field.name in limits:
            if _unlimited(theirs) and not _unlimited(ours):
                # Warned: bounding a stream that holds more drops its oldest messages.
                log.warning("stream %s: adding the missing limit %s=%s", name, field.name, ours)
                changes[field.name] = ours
            else:
                log.warning(
                    "stream %s keeps %s=%s (this configuration has %s): a limit the stream has "
                    "is never changed here; edit the stream to change it",
                    name,
                    field.name,
                    theirs,
                    ours,
                )
        elif update:
            log.info("stream %s: setting %s=%s (was %s)", name, field.name, ours, theirs)
            changes[field.name] = ours
    if not changes:
        return info
    # Everything else, an operator's settings included, stays as the stream has it.
    merged = dataclasses.replace(current, **changes)
    if merged.max_age and merged.duplicate_window and merged.duplicate_window > merged.max_age:
        merged.duplicate_window = merged.max_age  # NATS requires it within the max age
    try:
        return await js.update_stream(merged)
    except APIError as err:
        if err.err_code == _INSUFFICIENT_STORAGE:
            raise _storage_error(merged, err) from err
        raise


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    events_max_age: float | None = None,
    events_per_object: int | None = None,
    lease_ttl: float | None = None,
    max_bytes: int | None = None,
) -> None:
    """Create the events, requests and dead-letter streams and the lease bucket if missing.

    A setting given here is also applied to an existing stream, except a limit the stream
    already has (see :func:`ensure_stream`); one left as None keeps what the stream has, so a
    service started with defaults never undoes another's configuration (the watcher owns the
    events' max age, the queue services the lease TTL). ``max_bytes`` is the budget of all the
    streams, split as the module docstring says (None: 8 GiB).
    """
    budget = max_bytes or DEFAULT_MAX_BYTES
    for config, update, limits in (
        (
            events_config(
                replicas=replicas,
                max_age=events_max_age or DEFAULT_EVENTS_MAX_AGE,
                max_bytes=stream_max_bytes(EVENTS_STREAM, budget),
                per_object=events_per_object or DEFAULT_EVENTS_PER_OBJECT,
            ),
            events_max_age is not None,
            EVENTS_LIMITS,
        ),
        (
            requests_config(replicas=replicas, max_bytes=stream_max_bytes(REQUESTS_STREAM, budget)),
            True,
            LIMITS,
        ),
        (
            deadletter_config(
                replicas=replicas, max_bytes=stream_max_bytes(DEADLETTER_STREAM, budget)
            ),
            True,
            LIMITS,
        ),
        (
            leases_config(
                replicas=replicas,
                ttl=lease_ttl or DEFAULT_LEASE_TTL,
                max_bytes=stream_max_bytes(LEASES_STREAM, budget),
            ),
            lease_ttl is not None,
            # The bucket's max age is the lease TTL's upper bound, the queue services'
            # setting, not a storage limit.
            tuple(limit for limit in LIMITS if limit != "max_age"),
        ),
    ):
        await ensure_stream(js, config, update=update, limits=limits)
