"""The local instance's ports with a NATS cluster: the first 8 mean what they always did (a
one-node instance is unchanged), each further node gets client, monitor and route ports after
them, all inside the block free_base_port reserved."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.layout import Layout, block_size

pytestmark = pytest.mark.unit


def test_one_node_keeps_the_block_of_eight() -> None:
    layout = Layout(Path("/nonexistent"), base_port=20000)
    assert block_size(1) == 8
    assert layout.nats_ports == [(20006, 20007, 20008)]


def test_three_nodes_have_distinct_ports_inside_their_block() -> None:
    layout = Layout(Path("/nonexistent"), base_port=20000, nats_nodes=3)
    ports = [port for node in layout.nats_ports for port in node]
    others = [layout.etcd_port, layout.etcd_peer_port, layout.apiserver_port]
    others += [layout.controller_manager_port, layout.scheduler_port, layout.kwok_port]
    assert len(set(ports + others)) == len(ports + others) == block_size(3)
    assert set(ports + others) == set(range(20000, 20000 + block_size(3)))
    assert layout.nats_node_ports(0) == (layout.nats_port, layout.nats_monitor_port, 20008)
