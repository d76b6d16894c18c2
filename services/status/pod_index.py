"""The pods of every Memcached, kept in memory from the event stream instead of listed per refresh.

``status.nodes`` names a CR's ready pods. Asking the API server for them (a LIST by label) on
every refresh cost the cluster one request per status refresh — the largest share of this
operator's API traffic — while every pod change is on the event stream anyway: the watcher
publishes each one on ``mcop.events.pod.<ns>.<name>``. :class:`PodIndex` follows those subjects
with an ordered consumer (the newest event per pod first, then every new one, in stream order)
and keeps, per pod, only what the status needs: its owner and whether it is ready, which the
events carry as the ``ce-owner`` and ``ce-ready`` headers, so the consumer is headers-only and
the pods' bodies never travel (an event without them, from an older watcher, is read in full).
It is the kopf/controller-runtime informer cache, fed by the stream rather than by a watch of
its own.

Freshness. A refresh must not miss a pod change that happened before its request. Before it
reads, a refresh asks the stream for the sequence of the newest pod event in the CR's namespace
(one direct get) and waits until the index has folded up to it: a read-your-writes barrier that
covers every request, whichever change caused it and whatever it was coalesced with. That one
read goes to the stream's leader (a replica of an R3 stream may be behind it). The refreshes of
one namespace share it (shared/runtime/coalesce.py): one read in flight per namespace, answering
every refresh that asked before it went out, so sixteen refreshes at once cost two reads. If the
index does not get there in time (NATS is restarting, the index is resubscribing), the refresher
lists the pods from the API server instead, so a lagging index costs a request, never a wrong
status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge

from memcached_operator.shared.api.contract import OWNER_ANNOTATION
from memcached_operator.shared.api.pods import endpoint, pod_ip, pod_ready, valid_ip
from memcached_operator.shared.bus import leaderget, subjects
from memcached_operator.shared.bus.streams import EVENTS_STREAM
from memcached_operator.shared.bus.subjects import ObjectKey
from memcached_operator.shared.events import codec as events
from memcached_operator.shared.runtime import jsonc
from memcached_operator.shared.runtime.coalesce import Coalesced

log = logging.getLogger("memcached_operator.status.pods")


POD_INDEX_SIZE = Gauge("mcop_pod_index_pods", "Pods in the status service's pod index")
POD_READS = Counter(
    "mcop_pod_reads_total",
    "How a refresh got the CR's pods: index, or list (the index was behind or not synced)",
    ["source"],
)
POD_BARRIERS = Counter(
    "mcop_pod_index_barrier_reads_total",
    "Reads of the newest pod event's sequence for the index's barrier (shared by the refreshes "
    "of a namespace that asked before the read went out)",
)
INDEX = "index"
LIST = "list"
OWNER_HEADER = f"ce-{events.OWNER_ATTR}"
READY_HEADER = f"ce-{events.READY_ATTR}"
IP_HEADER = f"ce-{events.IP_ATTR}"


@dataclass(frozen=True)
class _Pod:
    owner: str
    ready: bool
    ip: str = ""


class PodIndex:
    """Ready pods per owning Memcached, folded from the pod events of the stream."""

    def __init__(self, js: JetStreamContext, *, heartbeat: float = 2.0) -> None:
        self._js = js
        self._heartbeat = heartbeat
        self._pods: dict[ObjectKey, _Pod] = {}
        self._by_owner: dict[ObjectKey, set[str]] = {}
        # Stream sequence of the newest event folded: the index reflects the stream up to it.
        self.sequence = 0
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._barrier: Coalesced[str, int] = Coalesced(self.newest_event)

    # -- reading ------------------------------------------------------------------------------

    def ready_pods(self, owner: ObjectKey) -> list[str]:
        """Sorted names of the owner's ready pods."""
        pods = (
            (n, self._pods.get(ObjectKey(owner.namespace, n)))
            for n in self._by_owner.get(owner, ())
        )
        return sorted(name for name, pod in pods if pod is not None and pod.ready)

    def ready_endpoints(self, owner: ObjectKey) -> list[str]:
        """Sorted ``host:port`` of the owner's ready pods that have an IP."""
        pods = (
            self._pods.get(ObjectKey(owner.namespace, n)) for n in self._by_owner.get(owner, ())
        )
        return sorted(endpoint(pod.ip) for pod in pods if pod is not None and pod.ready and pod.ip)

    async def newest_event(self, namespace: str) -> int:
        """Stream sequence of the newest pod event of ``namespace`` (0: none). Asked of the
        stream's leader (shared/bus/leaderget.py), not with a direct get: on a replicated
        stream a direct get may be answered by a replica that does not hold the newest pod
        event yet, and the barrier would let a refresh read pods older than its request."""
        POD_BARRIERS.inc()
        return await leaderget.last_sequence(
            self._js, EVENTS_STREAM, subjects.wildcard(subjects.EVENTS, "pod", namespace)
        )

    async def caught_up(self, namespace: str, *, timeout: float) -> bool:
        """Whether the index has folded every pod event of ``namespace`` the stream held when
        asked, waiting up to ``timeout`` seconds for it to get there."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            needed = await asyncio.wait_for(self._barrier(namespace), timeout=timeout)
        except Exception as err:
            log.debug("pod index: could not read the newest pod event: %r", err)
            return False
        if not needed:
            return self._task is not None  # no pod events at all: nothing to wait for
        while self.sequence < needed:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), timeout=left)
        return True

    # -- folding ------------------------------------------------------------------------------

    def fold(self, pod_key: ObjectKey, change: str, obj: dict[str, Any]) -> None:
        """Apply one pod event (``change`` is added, modified or deleted) from its body."""
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        self.fold_fields(
            pod_key,
            change,
            str(annotations.get(OWNER_ANNOTATION) or ""),
            pod_ready(obj),
            ip=pod_ip(obj),
        )

    def fold_fields(
        self, pod_key: ObjectKey, change: str, owner_name: str, ready: bool, *, ip: str = ""
    ) -> None:
        """Apply one pod event given its owner's name ('' for none), readiness and IP ('' for
        none; checked to be an IP here too, as it came in a header)."""
        old = self._pods.pop(pod_key, None)
        if old is not None and (change == "deleted" or old.owner != owner_name):
            self._unlink(pod_key, old.owner)
        if change != "deleted" and owner_name:
            self._pods[pod_key] = _Pod(owner_name, ready, valid_ip(ip))
            self._by_owner.setdefault(ObjectKey(pod_key.namespace, owner_name), set()).add(
                pod_key.name
            )
        POD_INDEX_SIZE.set(len(self._pods))

    def _unlink(self, pod_key: ObjectKey, owner_name: str) -> None:
        owner = ObjectKey(pod_key.namespace, owner_name)
        names = self._by_owner.get(owner)
        if names is None:
            return
        names.discard(pod_key.name)
        if not names:
            del self._by_owner[owner]

    # -- following the stream -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="pod-index")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        """Subscribe and fold for ever; after a failure, start again from the newest per pod."""
        attempt = 0
        while True:
            try:
                await self._follow_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                attempt += 1
                log.warning("pod index: following the stream failed (%r); resubscribing", err)
                await asyncio.sleep(min(5.0, 0.25 * 2**attempt))

    async def _follow_once(self) -> None:
        # The newest event per pod, then every new one: the state is rebuilt from scratch.
        self._pods.clear()
        self._by_owner.clear()
        self.sequence = 0
        sub = await self._js.subscribe(
            subjects.wildcard(subjects.EVENTS, "pod"),
            ordered_consumer=True,
            idle_heartbeat=self._heartbeat,
            # Headers only: ce-owner and ce-ready say all the index needs, so the pods' bodies
            # (~4 KB each) stay on the server.
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, headers_only=True),
            stream=EVENTS_STREAM,
        )
        log.info("pod index: following the pod events")
        try:
            while True:
                msg = await sub.next_msg(timeout=None)
                sequence = msg.metadata.sequence.stream
                await self._fold_message(msg.subject, msg.headers or {}, sequence)
                self.sequence = max(self.sequence, sequence)
                self._advanced.set()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fold_message(self, subject: str, headers: dict[str, str], sequence: int) -> None:
        try:
            key = subjects.parse(subject).key
            change = events.decode_value(headers.get("ce-type", "")).rsplit(".", 1)[-1]
        except ValueError:
            log.warning("pod index: ignoring an unreadable event on %s", subject)
            return
        if change not in events.CHANGES:
            log.warning("pod index: ignoring an event of unknown type on %s", subject)
            return
        owner, ready = headers.get(OWNER_HEADER), headers.get(READY_HEADER)
        if owner is not None and ready in ("true", "false"):
            self.fold_fields(
                key,
                change,
                events.decode_value(owner),
                ready == "true",
                ip=events.decode_value(headers.get(IP_HEADER, "")),
            )
            return
        # An event published before the watcher added these attributes: read its body.
        try:
            stored = await self._js.get_msg(EVENTS_STREAM, seq=sequence, direct=True)
        except NotFoundError:
            return  # aged out of the stream since it was delivered
        try:
            obj = jsonc.loads(stored.data or b"")
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            log.warning("pod index: ignoring an unreadable event on %s", subject)
            return
        self.fold(key, change, obj)
