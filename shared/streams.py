"""The JetStream streams and the KV bucket the pipeline runs on, and how they are created.

Four stores, each with one job: the events stream is the audit log (every watched change and
every reconcile outcome, kept for days, readable per subject with direct gets); the requests
stream is the work queue (WorkQueue retention, one message per subject so that pending
requests for one object coalesce); the dead-letter stream keeps the requests the queue gave up
on, with the reason; the ``mcop-leases`` bucket holds the short-lived per-object leases that
make reconciles of one object exclusive across the fleet. :func:`ensure_streams` creates them
or brings an existing one to this configuration, and is safe to call from every process at
start-up, concurrently.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext, api
from nats.js.errors import APIError

from shared.subjects import DEADLETTER, EVENTS, OUTCOMES, PREFIX, REQUESTS

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
REQUESTS_MAX_AGE = 1 * DAY
DEADLETTER_MAX_AGE = 30 * DAY
EVENTS_DUPLICATE_WINDOW = 10 * 60.0
# Upper bound for any lease: a lease also carries its own, possibly shorter, per-message TTL.
DEFAULT_LEASE_TTL = 30.0

# JSStreamNameExistErr: the stream exists with another configuration.
_STREAM_EXISTS_DIFFERENTLY = 10058


def events_config(
    *, replicas: int = 1, max_age: float = DEFAULT_EVENTS_MAX_AGE
) -> api.StreamConfig:
    return api.StreamConfig(
        name=EVENTS_STREAM,
        description="memcached-operator: watched changes and reconcile outcomes (audit, replay)",
        subjects=[f"{PREFIX}.{EVENTS}.>", f"{PREFIX}.{OUTCOMES}.>"],
        retention=api.RetentionPolicy.LIMITS,
        max_age=max_age,
        storage=api.StorageType.FILE,
        duplicate_window=min(EVENTS_DUPLICATE_WINDOW, max_age),
        allow_direct=True,
        num_replicas=replicas,
    )


def requests_config(*, replicas: int = 1) -> api.StreamConfig:
    return api.StreamConfig(
        name=REQUESTS_STREAM,
        description="memcached-operator: reconcile requests, one pending per object",
        subjects=[f"{PREFIX}.{REQUESTS}.>"],
        retention=api.RetentionPolicy.WORK_QUEUE,
        # A newer request for an object replaces the waiting one (discard old, per subject).
        max_msgs_per_subject=1,
        max_age=REQUESTS_MAX_AGE,
        storage=api.StorageType.FILE,
        # The work queue asks "is a newer request for this subject waiting?" before it runs.
        allow_direct=True,
        num_replicas=replicas,
    )


def deadletter_config(*, replicas: int = 1) -> api.StreamConfig:
    return api.StreamConfig(
        name=DEADLETTER_STREAM,
        description="memcached-operator: requests the work queue gave up on, with the reason",
        subjects=[f"{PREFIX}.{DEADLETTER}.>"],
        retention=api.RetentionPolicy.LIMITS,
        max_age=DEADLETTER_MAX_AGE,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
    )


def leases_config(*, replicas: int = 1, ttl: float = DEFAULT_LEASE_TTL) -> api.StreamConfig:
    """The ``mcop-leases`` KV bucket, spelled out as its stream (as ``nats kv add`` makes it)."""
    return api.StreamConfig(
        name=LEASES_STREAM,
        description="memcached-operator: per-object reconcile leases",
        subjects=[f"{LEASES_SUBJECT_PREFIX}>"],
        retention=api.RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,  # history 1
        max_age=ttl,
        discard=api.DiscardPolicy.NEW,
        storage=api.StorageType.FILE,
        duplicate_window=min(120.0, ttl),
        allow_rollup_hdrs=True,
        deny_delete=True,
        allow_direct=True,
        # Each lease write sets Nats-TTL, so a queue can use a TTL shorter than the bucket's.
        allow_msg_ttl=True,
        max_consumers=-1,
        max_msgs=-1,
        num_replicas=replicas,
    )


async def ensure_stream(
    js: JetStreamContext, config: api.StreamConfig, *, update: bool = True
) -> api.StreamInfo:
    """Create the stream; when it exists with another configuration, update it only if
    `update` (the service that owns that setting), else leave it as it is."""
    try:
        # Adding a stream that exists with the same configuration succeeds, so concurrent
        # callers with one configuration never reach the update.
        return await js.add_stream(config)
    except APIError as err:
        if err.err_code != _STREAM_EXISTS_DIFFERENTLY:
            raise
    if not update:
        return await js.stream_info(str(config.name))
    log.info("updating the configuration of stream %s", config.name)
    return await js.update_stream(config)


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    events_max_age: float | None = None,
    lease_ttl: float | None = None,
) -> None:
    """Create the events, requests and dead-letter streams and the lease bucket if missing.

    A setting given here is also applied to an existing stream; one left as None keeps what
    the stream has, so a service started with defaults never undoes another's configuration
    (the watcher owns the events' max age, the queue services the lease TTL).
    """
    for config, update in (
        (
            events_config(replicas=replicas, max_age=events_max_age or DEFAULT_EVENTS_MAX_AGE),
            events_max_age is not None,
        ),
        (requests_config(replicas=replicas), True),
        (deadletter_config(replicas=replicas), True),
        (
            leases_config(replicas=replicas, ttl=lease_ttl or DEFAULT_LEASE_TTL),
            lease_ttl is not None,
        ),
    ):
        await ensure_stream(js, config, update=update)
