"""Stream administration: the one step that creates the streams, and the services' check of it.

`memcached-operator streams ensure`, run with the NATS admin identity (locally by `cluster up`,
in Kubernetes by the Job `nats-streams`), creates the events, requests and dead-letter streams
and the lease bucket, or brings existing ones to the configuration its flags give (replicas,
the events' max age and per-object cap, the lease bucket's TTL). No service may do that: a
service only reads the streams' info, and :func:`stream_problems` says what is missing or
shaped differently from what the code needs, so that the service stays unready, and says what
to run, until the admin step has run.

On a NATS cluster a replicated stream also needs a quorum: its leader keeps answering stream
info after it lost its peers (two of three nodes gone), but can store nothing. A stream whose
leader has not heard from a majority of its replicas for :data:`SILENT_AFTER` seconds is a
problem too, so the services report not ready (degraded) until the nodes are back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from pydantic import field_validator

from memcached_operator.shared.bus import connection as natsconn
from memcached_operator.shared.bus.streams import (
    DEADLETTER_STREAM,
    DEFAULT_EVENTS_MAX_AGE,
    DEFAULT_EVENTS_PER_OBJECT,
    DEFAULT_LEASE_TTL,
    EVENTS_LIMITS,
    EVENTS_STREAM,
    LEASES_STREAM,
    REQUESTS_STREAM,
    deadletter_config,
    ensure_streams,
    events_config,
    leases_config,
    parse_bytes,
    requests_config,
)
from memcached_operator.shared.runtime import settings
from memcached_operator.shared.runtime.settings import NatsSettings, setting

log = logging.getLogger("memcached_operator.streams")

ALL_STREAMS = (EVENTS_STREAM, REQUESTS_STREAM, DEADLETTER_STREAM, LEASES_STREAM)
ENSURE_COMMAND = "memcached-operator streams ensure"
# The settings the services' code depends on; the others (replicas, ages, sizes) are the
# operator's to choose with the admin step's flags.
_SHAPE = ("subjects", "retention", "max_msgs_per_subject", "allow_direct", "allow_msg_ttl")


# A replica the leader has not heard from for this long counts as gone (a healthy one is heard
# from about every second; a node under load can be slower).
SILENT_AFTER = 10.0


def quorum_problem(name: str, info: api.StreamInfo) -> str | None:
    """Why stream ``name`` cannot store anything for want of replicas, or None (also for a
    stream with one replica, or on a single server)."""
    cluster = info.cluster
    if cluster is None or not cluster.replicas:
        return None
    if not cluster.leader:
        return f"stream {name} has no leader"
    peers = 1 + len(cluster.replicas)
    heard = 1 + sum(
        1
        for r in cluster.replicas
        if not r.offline and (r.active or 0) < SILENT_AFTER * 1e9  # nanoseconds
    )
    if heard * 2 <= peers:
        return f"stream {name} has no quorum: {heard} of {peers} replicas reachable"
    return None


def _expected() -> dict[str, api.StreamConfig]:
    return {
        c.name or "": c
        for c in (events_config(), requests_config(), deadletter_config(), leases_config())
    }


async def stream_problems(js: JetStreamContext, names: Iterable[str] = ALL_STREAMS) -> list[str]:
    """What is wrong with the streams ``names`` for this code, one line each; [] when none.

    Raises what the JetStream request raises for anything but a missing stream (not
    connected, a timeout, a permission refused), so the caller can tell "not yet" from "no".
    """
    expected = _expected()
    problems = []
    for name in names:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            problems.append(f"stream {name} does not exist")
            continue
        quorum = quorum_problem(name, info)
        if quorum is not None:
            problems.append(quorum)
        want = expected.get(name)
        if want is None:
            continue
        for field in _SHAPE:
            if name == EVENTS_STREAM and field in EVENTS_LIMITS:
                continue  # the events' per-object cap is a limit an operator sets, not shape
            have, need = getattr(info.config, field), getattr(want, field)
            if need is not None and _normal(have) != _normal(need):
                problems.append(f"stream {name} has {field}={have!r}, this code needs {need!r}")
    return problems


def _normal(value: object) -> object:
    if isinstance(value, list):
        return sorted(value)
    return value or None  # unset, False, 0 and [] all mean "not enabled"


# -- `memcached-operator streams ensure` -------------------------------------------------------


class StreamAdminSettings(NatsSettings):
    """The admin step's settings; an unset size or age keeps what an existing stream has."""

    nats_url: str = setting(
        natsconn.DEFAULT_URL,
        env="NATS_URL",
        help="as the NATS admin user (credentials from NATS_USER/NATS_PASSWORD, TLS from NATS_CA)",
    )
    stream_replicas: int = setting(
        1,
        env="STREAM_REPLICAS",
        ge=1,
        help="JetStream replicas of every stream (3 on a 3-node cluster)",
    )
    events_max_age: float | None = setting(
        None,
        env="EVENTS_MAX_AGE",
        gt=0,
        help=f"seconds the event stream keeps events; unset keeps an existing stream's, "
        f"{DEFAULT_EVENTS_MAX_AGE:.0f} for a new one",
    )
    events_per_object: int | None = setting(
        None,
        env="EVENTS_PER_OBJECT",
        ge=1,
        help=f"records the event stream keeps per object, its newest (one object changed in a "
        f"loop then evicts only its own); applied to a stream only when it has no such limit "
        f"yet, {DEFAULT_EVENTS_PER_OBJECT} for a new one",
    )
    lease_ttl: float | None = setting(
        None,
        env="LEASE_TTL",
        gt=0,
        help=f"the lease bucket's TTL, the longest any lease may live; unset keeps an "
        f"existing bucket's, {DEFAULT_LEASE_TTL:.0f} for a new one",
    )
    stream_max_bytes: int | None = setting(
        None,
        env="STREAM_MAX_BYTES",
        gt=0,
        help="bytes all the streams may hold together, e.g. 8GiB (the default), split across "
        "them as shared/bus/streams.py says; applied to a stream only when it has no limit yet, "
        "and must fit the NATS server's max_file_store",
    )

    @field_validator("stream_max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_bytes(value) if isinstance(value, str) else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["ensure", "check"])
    settings.add_flags(parser, StreamAdminSettings)


async def ensure(args: StreamAdminSettings, action: str) -> int:
    nc = await natsconn.connect("streams-admin", args.nats_url)
    try:
        js = nc.jetstream()
        if action == "ensure":
            await ensure_streams(
                js,
                replicas=args.stream_replicas,
                events_max_age=args.events_max_age,
                events_per_object=args.events_per_object,
                lease_ttl=args.lease_ttl,
                max_bytes=args.stream_max_bytes,
            )
        problems = await stream_problems(js)
    finally:
        await nc.close()
    for problem in problems:
        print(f"streams: {problem}")
    if not problems:
        print("streams: " + ", ".join(ALL_STREAMS) + " ready")
    return 1 if problems else 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = settings.from_args(StreamAdminSettings, args)
    return asyncio.run(ensure(config, args.action))
