"""A replicated stream whose leader has not heard from a majority of its replicas can store
nothing, although it still answers stream info: the services report that as a stream problem
(not ready, degraded), and a single-replica stream never has one."""

from __future__ import annotations

import pytest
from nats.js.api import ClusterInfo, PeerInfo, StreamConfig, StreamInfo, StreamState

from memcached_operator.shared.bus.stream_admin import SILENT_AFTER, quorum_problem

pytestmark = pytest.mark.unit

HEARD = int(0.05e9)  # nanoseconds since the leader last heard from the replica
SILENT = int((SILENT_AFTER + 1) * 1e9)


def _info(cluster: ClusterInfo | None) -> StreamInfo:
    state = StreamState(messages=0, bytes=0, first_seq=0, last_seq=0, consumer_count=0)
    return StreamInfo(config=StreamConfig(name="S"), state=state, cluster=cluster)


def _peers(*active: int, offline: bool = False) -> list[PeerInfo]:
    return [
        PeerInfo(name=f"n{i}", current=True, offline=offline, active=a, lag=0)
        for i, a in enumerate(active)
    ]


def test_all_replicas_heard_from() -> None:
    assert (
        quorum_problem("S", _info(ClusterInfo(leader="n9", replicas=_peers(HEARD, HEARD)))) is None
    )


def test_one_of_three_lost_keeps_the_quorum() -> None:
    assert (
        quorum_problem("S", _info(ClusterInfo(leader="n9", replicas=_peers(HEARD, SILENT)))) is None
    )


def test_two_of_three_lost_is_no_quorum() -> None:
    problem = quorum_problem("S", _info(ClusterInfo(leader="n9", replicas=_peers(SILENT, SILENT))))
    assert problem == "stream S has no quorum: 1 of 3 replicas reachable"


def test_offline_replicas_count_as_lost() -> None:
    info = _info(ClusterInfo(leader="n9", replicas=_peers(HEARD, HEARD, offline=True)))
    assert quorum_problem("S", info) is not None


def test_no_leader() -> None:
    assert quorum_problem("S", _info(ClusterInfo(leader=None, replicas=_peers(HEARD)))) == (
        "stream S has no leader"
    )


def test_one_replica_or_one_server_has_no_quorum_to_lose() -> None:
    assert quorum_problem("S", _info(None)) is None
    assert quorum_problem("S", _info(ClusterInfo(leader="n0", replicas=[]))) is None
