"""Starting the local nats-server: a server that cannot start says why at once, instead of a
30-second wait for a port it never opened; test ports come from below the ephemeral range; the
bench reads the server's own message counters."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import nats
import pytest

from bench.meters import NatsTraffic, nats_varz
from deploy.local import nats as local_nats
from deploy.local.layout import free_port
from deploy.local.processes import Supervisor

pytestmark = pytest.mark.integration


def test_a_server_whose_port_is_taken_fails_at_once_with_its_log(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(RuntimeError, match="exited before accepting") as failed:
            local_nats.start(sup, port=port, monitor_port=free_port())
    assert "address already in use" in str(failed.value).lower(), failed.value
    sup.stop(local_nats.NAME)


def test_test_ports_are_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(1024 < port < low for port in ports), sorted(ports)


def test_the_bench_counts_the_messages_through_the_server(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    port, monitor = free_port(), free_port()
    local_nats.start(sup, port=port, monitor_port=monitor)
    try:
        traffic = NatsTraffic([monitor])
        traffic.start()

        async def publish() -> None:
            nc = await nats.connect(f"nats://127.0.0.1:{port}")
            for i in range(5):
                await nc.publish("bench.traffic", b"x" * 100 * (i + 1))
            await nc.flush()
            await nc.close()

        asyncio.run(publish())
        # Polled (bounded): nothing promises the totals are updated before flush() returns.
        deadline = time.monotonic() + 5
        counted = traffic.stop()
        while counted["in_msgs"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
            counted = traffic.stop()
    finally:
        sup.stop(local_nats.NAME)
    assert counted["in_msgs"] == 5, counted
    assert counted["in_bytes"] == 1500, counted


def test_an_unreadable_monitor_is_an_error_not_zero_traffic() -> None:
    with pytest.raises(RuntimeError, match=r"unreadable: .*Connection refused"):
        nats_varz([free_port()], wait=0.5)
