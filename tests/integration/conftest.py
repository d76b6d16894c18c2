"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from memcached_operator.shared.bus.streams import ensure_streams


@pytest.fixture
async def nc(nats_server: Any) -> AsyncIterator[Client]:
    """A connection to the session's nats-server, with the operator's streams in place."""
    conn = await nats.connect(nats_server.url)
    await ensure_streams(conn.jetstream())
    yield conn
    await conn.close()
