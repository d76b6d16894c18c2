"""Connecting to NATS the same way in every service: credentials, TLS, inbox, reconnects, logs.

The URL comes from NATS_URL (a comma-separated list for a cluster); credentials from
NATS_USER/NATS_PASSWORD, NATS_TOKEN or a NATS_CREDS file, so the per-service NATS users of
deploy/ work unchanged. A connection as user U receives its replies on ``_INBOX_U.``, the only
inbox its NATS permissions let it subscribe to, so no other user can read them. NATS_CA (a CA
bundle file) makes the connection TLS, verifying the server against that CA only; a
``tls://`` URL without it verifies against the system's CAs. Connections reconnect forever
with jittered waits and report state changes in the log; JetStream operations made while
disconnected fail fast with a transient error rather than hanging. Some server errors (an
authorization violation, a protocol violation such as an over-long control line) make nats-py
close the connection for good instead of reconnecting: ``on_closed`` is awaited then, and the
service decides what to do (shared/runtime/process.py stops it with a failure; /healthz fails
meanwhile).
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from memcached_operator.shared.bus import headers as nats_headers

log = logging.getLogger("memcached_operator.nats")
DEFAULT_URL = "nats://127.0.0.1:4222"

if not nats_headers.install():
    log.warning("nats-py's header parser has changed; using it as it is")


_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def inbox_prefix(user: str | None) -> str:
    """The inbox prefix of a NATS user (services/admin/nats_auth.py grants ``<prefix>.>``)."""
    if not user:
        return "_INBOX"
    return f"_INBOX_{_TOKEN_UNSAFE.sub('_', user)}"


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """TLS verifying the server against ``ca_file`` only (hostname checked), or None."""
    if not ca_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def connect(
    name: str, url: str | None = None, *, on_closed: Callable[[], Awaitable[None]] | None = None
) -> Client:
    servers = (url or os.environ.get("NATS_URL") or DEFAULT_URL).split(",")

    async def on_error(err: Exception) -> None:
        log.warning("nats error: %s", err)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    async def on_close() -> None:
        log.info("nats connection closed")
        if on_closed is not None:
            await on_closed()

    kwargs: dict[str, object] = {"inbox_prefix": inbox_prefix(os.environ.get("NATS_USER"))}
    tls = tls_context(os.environ.get("NATS_CA"))
    if tls is not None:
        kwargs["tls"] = tls
    if os.environ.get("NATS_USER"):
        kwargs["user"] = os.environ["NATS_USER"]
        kwargs["password"] = os.environ.get("NATS_PASSWORD", "")
    if os.environ.get("NATS_TOKEN"):
        kwargs["token"] = os.environ["NATS_TOKEN"]
    if os.environ.get("NATS_CREDS"):
        kwargs["user_credentials"] = os.environ["NATS_CREDS"]
    nc: Client = await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        closed_cb=on_close,
        pending_size=64 * 1024 * 1024,
        **kwargs,
    )
    return nc


def client_of(js: JetStreamContext) -> Client:
    """The connection behind ``js`` (nats-py keeps it there; it has no public accessor)."""
    nc: Client = js._nc
    return nc


def api_prefix(js: JetStreamContext) -> str:
    """The JetStream API subject prefix of ``js`` (``$JS.API``; a JetStream domain changes it)."""
    return str(getattr(js, "_prefix", "$JS.API"))
