"""The keyed work queue against a real nats-server: each property of issue 4 part 1, as a user
of the queue would notice it (which runs happen, in which order, what lands where).

Every test uses its own controller name, so its consumer and subjects are its own although the
streams are shared by the whole session. Ack wait and lease TTL are a couple of seconds so that
the crash and shutdown tests stay short.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import REGISTRY

from memcached_operator.shared.bus.streams import (
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    LEASES_BUCKET,
    REQUESTS_STREAM,
    ensure_streams,
)
from memcached_operator.shared.bus.subjects import DEADLETTER, ObjectKey, subject
from memcached_operator.shared.runtime.errors import PermanentError, TransientError
from memcached_operator.shared.workqueue.controller import Controller
from memcached_operator.shared.workqueue.deadletter import (
    DL_BODY_TRUNCATED,
    DL_DELIVERIES,
    DL_ERROR,
    DL_REASON,
    DL_SUBJECT,
    MALFORMED_BODY,
    MAX_DELIVERIES_EXCEEDED,
    MISSING_HEADER,
    REQUEST_TOO_LARGE,
    UNPARSABLE_SUBJECT,
)
from memcached_operator.shared.workqueue.queue import KeyedWorkQueue, enqueue
from memcached_operator.shared.workqueue.runner import superseded
from memcached_operator.shared.workqueue.settings import QueueSettings
from memcached_operator.shared.workqueue.types import Handler, Request, Result
from tests.support import await_for

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("workqueue_worker.py")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def controller() -> str:
    return f"wq-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def queues(nats_server: Any) -> AsyncIterator[Callable[..., Awaitable[KeyedWorkQueue]]]:
    """Start queues, each on its own connection like separate processes; stopped afterwards."""
    started: list[tuple[KeyedWorkQueue, Client]] = []

    async def start(handler: Handler, **kwargs: Any) -> KeyedWorkQueue:
        conn = await nats.connect(nats_server.url)
        kwargs.setdefault("ack_wait", 2.0)
        kwargs.setdefault("lease_ttl", 2.0)
        # The tuning goes into QueueSettings; the rest (controller, callbacks, ...) as is.
        tuning = {k: kwargs.pop(k) for k in list(kwargs) if k in QueueSettings.__dataclass_fields__}
        queue = KeyedWorkQueue(conn, settings=QueueSettings(**tuning), **kwargs)
        await queue.start(handler)
        started.append((queue, conn))
        return queue

    yield start
    for queue, conn in started:
        await queue.stop(timeout=10)
        await conn.close()


async def eventually(
    predicate: Callable[[], bool], *, within: float = 30.0, what: str = "condition"
) -> None:
    await await_for(predicate, timeout=within, what=what, every=0.05)


async def dead_letters(js: JetStreamContext, controller: str) -> list[Msg]:
    """All dead-lettered requests of one controller, oldest first."""
    psub = await js.pull_subscribe(f"mcop.{DEADLETTER}.{controller}.>", stream=DEADLETTER_STREAM)
    found: list[Msg] = []
    try:
        while True:
            try:
                found.extend(await psub.fetch(100, timeout=0.5))
            except TimeoutError:
                return found
    finally:
        await psub.unsubscribe()


async def dead_letters_eventually(
    js: JetStreamContext, controller: str, *, within: float = 10.0
) -> list[Msg]:
    """The dead letters once there are some (the callback runs before the record is read)."""
    deadline = time.monotonic() + within
    while True:
        found = await dead_letters(js, controller)
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def drained(js: JetStreamContext, controller: str, *, within: float = 5.0) -> bool:
    """Whether no request of ``controller`` is left in the stream (within a moment: an ack
    follows the end of a run)."""
    deadline = time.monotonic() + within
    while await pending_subjects(js, controller):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def pending_subjects(js: JetStreamContext, controller: str) -> dict[str, int]:
    info = await js.stream_info(REQUESTS_STREAM, subjects_filter=f"mcop.requests.{controller}.>")
    return dict(info.state.subjects or {})


async def add_consumer(js: JetStreamContext, controller: str) -> None:
    """The durable consumer a queue of ``controller`` would create, made before any queue."""
    await js.add_consumer(
        REQUESTS_STREAM,
        ConsumerConfig(
            durable_name=f"mcop-{controller}",
            filter_subject=f"mcop.requests.{controller}.>",
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )


def metric(sample: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(sample, labels) or 0.0


@dataclass
class Run:
    key: ObjectKey
    n: Any
    delivery: int
    started: float
    ended: float | None = None
    retries: int = 0


@dataclass
class Recorder:
    """A handler that records each run and tracks how many runs of a key are active."""

    sleep: Callable[[Request], float] = lambda request: 0.0
    fail: Callable[[Request], BaseException | None] = lambda request: None
    runs: list[Run] = field(default_factory=list)
    active: dict[ObjectKey, int] = field(default_factory=lambda: defaultdict(int))
    max_active: dict[ObjectKey, int] = field(default_factory=lambda: defaultdict(int))

    async def __call__(self, request: Request) -> Result:
        run = Run(request.key, request.payload().get("n"), request.delivery, time.monotonic())
        run.retries = request.retries
        self.runs.append(run)
        self.active[request.key] += 1
        self.max_active[request.key] = max(self.max_active[request.key], self.active[request.key])
        try:
            await asyncio.sleep(self.sleep(request))
            error = self.fail(request)
            if error is not None:
                raise error
            return Result()
        finally:
            self.active[request.key] -= 1
            run.ended = time.monotonic()

    def of(self, key: ObjectKey) -> list[Run]:
        return [run for run in self.runs if run.key == key]


def body(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


class Workers:
    """Worker processes (tests/integration/workqueue_worker.py) sharing one log file."""

    def __init__(self, url: str, controller: str, log: Path) -> None:
        self.url, self.controller, self.log = url, controller, log
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, str(WORKER), "--url", self.url, "--controller", self.controller]
        cmd += ["--log", str(self.log), "--worker", name, *args]
        # stderr to a file, not a pipe: a pipe nobody reads would block a chatty worker.
        with self.stderr(name).open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        self.procs[name] = proc
        return proc

    def stderr(self, name: str) -> Path:
        return self.log.with_name(f"{name}.stderr")

    def lines(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split() for line in self.log.read_text().splitlines() if line]

    def has(self, event: str, worker: str, key: str = "-") -> bool:
        return any(
            f[0] == event and f[2] == worker and (key == "-" or f[1] == key) for f in self.lines()
        )

    async def ready(self, *names: str) -> None:
        for name in names:
            await eventually(lambda n=name: self.has("ready", n), what=f"worker {name} ready")

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def workers(nats_server: Any, controller: str, tmp_path: Path) -> Iterator[Workers]:
    fleet = Workers(nats_server.url, controller, tmp_path / "runs.log")
    yield fleet
    fleet.cleanup()


def assert_runs_never_overlap(lines: list[list[str]]) -> dict[str, list[list[str]]]:
    """Per key, the log must read start, end, start, end, ... with each end matching its start."""
    per_key: dict[str, list[list[str]]] = defaultdict(list)
    for fields_ in lines:
        if fields_[0] in ("start", "end"):
            per_key[fields_[1]].append(fields_)
    for key, events in per_key.items():
        for i, event in enumerate(events):
            expected = "start" if i % 2 == 0 else "end"
            assert event[0] == expected, f"runs of {key} overlap: {events[max(0, i - 2) : i + 1]}"
            if expected == "end":
                assert event[2:5] == events[i - 1][2:5], f"interleaved runs of {key}: {events}"
    return per_key


# -- the streams ------------------------------------------------------------------------------


async def test_ensure_streams_is_idempotent_when_called_concurrently(nats_server: Any) -> None:
    conns = [await nats.connect(nats_server.url) for _ in range(3)]
    try:
        await asyncio.gather(*(ensure_streams(c.jetstream()) for c in conns))
        await ensure_streams(conns[0].jetstream())
        js = conns[0].jetstream()
        requests = (await js.stream_info(REQUESTS_STREAM)).config
        assert requests.retention == "workqueue"
        assert requests.max_msgs_per_subject == 1
        assert requests.subjects == ["mcop.requests.>"]
        events = (await js.stream_info(EVENTS_STREAM)).config
        assert sorted(events.subjects or []) == ["mcop.events.>", "mcop.outcomes.>"]
        assert events.duplicate_window == 600
        assert events.allow_direct
        assert (await js.stream_info(DEADLETTER_STREAM)).config.max_age == 30 * 86400
        kv = await js.key_value(LEASES_BUCKET)
        assert (await kv.status()).history == 1
    finally:
        for c in conns:
            await c.close()


# -- a. coalescing ----------------------------------------------------------------------------


async def test_pending_requests_for_a_key_coalesce_into_the_newest(
    nc: Client, controller: str, queues: Any
) -> None:
    js = nc.jetstream()
    k, other = ObjectKey("default", "cache-a"), ObjectKey("prod", "cache.b")
    for n in range(20):
        await enqueue(js, controller=controller, key=k, body=body(n))
    for n in range(5):
        await enqueue(js, controller=controller, key=other, body=body(n))
    assert sorted((await pending_subjects(js, controller)).values()) == [1, 1]

    recorder = Recorder()
    await queues(recorder, controller=controller, concurrency=3, depth_interval=0.2)
    await eventually(lambda: len(recorder.runs) >= 2, what="both keys handled")
    # No request left in the stream and no run under way: no extra run can still come.
    assert await drained(js, controller)
    await eventually(lambda: all(r.ended is not None for r in recorder.runs), what="the runs")
    assert sorted((r.key, r.n) for r in recorder.runs) == sorted([(k, 19), (other, 4)])
    # The queue counts a run once it has settled it, a moment after the handler returned.
    await eventually(
        lambda: metric("workqueue_work_duration_seconds_count", name=controller) >= 2,
        what="both runs counted",
    )

    assert metric("workqueue_adds_total", name=controller) == 25
    assert metric("workqueue_work_duration_seconds_count", name=controller) == 2
    assert metric("workqueue_queue_duration_seconds_count", name=controller) == 2
    assert metric("controller_runtime_max_concurrent_reconciles", controller=controller) == 3
    # The depth gauge is sampled every depth_interval: its next sample sees the empty queue.
    await eventually(
        lambda: REGISTRY.get_sample_value("workqueue_depth", {"name": controller}) == 0,
        what="the depth gauge at 0",
    )


async def test_yielding_to_a_controller_without_workers_yet_holds_nothing_back(
    nc: Client, controller: str, queues: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The status service may start before any reconciler has created its consumer: that is
    no backlog (and nothing to warn about), so the queue runs at full concurrency."""
    js = nc.jetstream()
    recorder = Recorder(sleep=lambda r: 0.5)
    queue = await queues(
        recorder,
        controller=controller,
        concurrency=4,
        yield_to=f"{controller}-absent",
        yield_backlog=0,
        yield_interval=0.1,
    )
    for n in range(4):
        await enqueue(js, controller=controller, key=ObjectKey("default", f"a{n}"), body=body(n))
    await eventually(lambda: len(recorder.runs) == 4, what="all four runs")
    starts = sorted(r.started for r in recorder.runs)
    assert starts[-1] - starts[0] < 0.5, "the runs did not overlap: the queue held back"
    assert not queue.yielding
    assert "cannot read the backlog" not in caplog.text


async def test_a_queue_yielding_to_a_backlogged_controller_runs_one_request_at_a_time(
    nc: Client, controller: str, queues: Any
) -> None:
    """The status service yields to the reconciler: while more of the other controller's
    requests wait than the threshold, no run during the pause, then one run at a time; all of
    its own requests still run, and full concurrency comes back once the other controller
    catches up."""
    js = nc.jetstream()
    busy = f"{controller}-busy"
    await add_consumer(js, busy)
    for n in range(5):
        await enqueue(js, controller=busy, key=ObjectKey("default", f"b{n}"), body=body(n))
    recorder = Recorder(sleep=lambda r: 0.2)
    queue = await queues(
        recorder,
        controller=controller,
        concurrency=4,
        yield_to=busy,
        yield_backlog=2,
        yield_interval=0.1,
        yield_resume=0.3,
        yield_pause=4.0,
        fetch_timeout=0.5,
    )
    await eventually(lambda: queue.yielding, what="the queue yielding")
    assert metric("mcop_workqueue_yielding", name=controller) == 1
    # A fetch already waiting when the pause began may still bring its batch: let it expire
    # (the scenario: longer than fetch_timeout).
    await asyncio.sleep(0.7)
    keys = [ObjectKey("default", f"y{n}") for n in range(8)]
    for n, key in enumerate(keys):
        await enqueue(js, controller=controller, key=key, body=body(n))
    await asyncio.sleep(1.0)  # the scenario: a second of the pause, in which nothing may run
    assert recorder.runs == [], "a run started during the pause"
    await eventually(lambda: len(recorder.runs) == 8, what="every request run while yielding")
    assert max(recorder.max_active.values()) == 1
    assert all(
        later.started >= earlier.ended  # type: ignore[operator]
        for earlier, later in itertools.pairwise(recorder.runs)
    ), "runs overlapped while yielding"

    drained = Recorder()
    await queues(drained, controller=busy, concurrency=8)  # the other controller catches up
    await eventually(lambda: not queue.yielding, what="the queue back to full concurrency")
    assert metric("mcop_workqueue_yielding", name=controller) == 0
    assert len(drained.runs) == 5
    recorder.runs.clear()
    for n, key in enumerate(keys):
        await enqueue(js, controller=controller, key=key, body=body(10 + n))
    await eventually(lambda: len(recorder.runs) == 8, what="the second round")
    await eventually(lambda: all(r.ended is not None for r in recorder.runs), what="its end")
    overlapping = sum(
        1
        for a, b in itertools.combinations(recorder.runs, 2)
        if a.started < b.ended and b.started < a.ended  # type: ignore[operator]
    )
    assert overlapping > 0, "still one at a time after the backlog cleared"


# -- b. exclusivity, c. no lost request -------------------------------------------------------


@pytest.mark.parametrize("exclusive", ["fleet", "process"])
async def test_a_request_arriving_during_a_run_causes_exactly_one_more_run(
    nc: Client, controller: str, queues: Any, exclusive: str
) -> None:
    js = nc.jetstream()
    k = ObjectKey("default", "busy")
    recorder = Recorder(sleep=lambda r: 1.5 if r.payload()["n"] == 1 else 0.0)
    await queues(recorder, controller=Controller(controller, exclusive=exclusive), concurrency=4)
    contention_before = metric("mcop_lease_contention_total", controller=controller)

    await enqueue(js, controller=controller, key=k, body=body(1))
    await eventually(lambda: len(recorder.runs) == 1, what="the first run")
    await enqueue(js, controller=controller, key=k, body=body(2))
    await asyncio.sleep(0.3)  # the scenario: the third request comes later in the first run
    await enqueue(js, controller=controller, key=k, body=body(3))
    await eventually(lambda: len(recorder.runs) == 2 and recorder.runs[1].ended is not None)
    assert await drained(js, controller)  # nothing left that could run a third time

    first, second = recorder.of(k)  # exactly two runs: 2 and 3 coalesced
    assert (first.n, second.n) == (1, 3)
    assert first.ended is not None and second.started >= first.ended
    assert metric("mcop_lease_contention_total", controller=controller) > contention_before


async def test_a_waiting_request_is_superseded_by_a_newer_one_waiting_or_already_run(
    nc: Client, controller: str
) -> None:
    """What a request waiting for its object's lease learns from the stream. Its own request
    the newest: it runs. A newer one waiting: it lets go. A newer one that replaced it and has
    already run and been acked (gone from the stream, which keeps what is unsettled): it lets
    go too, or it would run after the newer one, out of order (a CI run saw request 145 of an
    object run after its request 149)."""
    js = nc.jetstream()
    k = ObjectKey("default", "overtaken")
    await add_consumer(js, controller)
    psub = await js.pull_subscribe_bind(durable=f"mcop-{controller}", stream=REQUESTS_STREAM)
    try:
        await enqueue(js, controller=controller, key=k, body=body(1))
        [waiting] = await psub.fetch(1, timeout=5)  # delivered, held while the lease is busy
        assert not await superseded(js, waiting)

        await enqueue(js, controller=controller, key=k, body=body(2))  # replaces request 1
        assert await superseded(js, waiting)

        [newer] = await psub.fetch(1, timeout=5)  # another worker runs request 2 and acks it
        assert json.loads(newer.data)["n"] == 2
        await newer.ack_sync()
        assert await pending_subjects(js, controller) == {}
        assert await superseded(js, waiting), "request 1 would run after request 2"
    finally:
        await psub.unsubscribe()


@pytest.mark.parametrize("same_process", [False, True], ids=["other-process", "same-process"])
async def test_a_request_overtaken_before_its_first_lease_attempt_lets_go(
    nc: Client, controller: str, same_process: bool
) -> None:
    """The race a request that gets its lease at once is not checked for: delivered, then
    replaced by a newer request that another worker (or a task of its own process) runs and
    releases before this one first tries the lease. The release's marker names the request
    that ran, so this one lets go (acked, not run) instead of running after the newer one."""
    from memcached_operator.shared.workqueue.lease import Leases
    from memcached_operator.shared.workqueue.runner import Runner

    js = nc.jetstream()
    k = ObjectKey("default", "overtaken")
    await add_consumer(js, controller)
    psub = await js.pull_subscribe_bind(durable=f"mcop-{controller}", stream=REQUESTS_STREAM)
    recorder = Recorder()

    def runner(leases: Leases) -> Runner:
        return Runner(
            js,
            controller=Controller(controller),
            settings=QueueSettings(ack_wait=5.0, lease_ttl=5.0),
            handler=recorder,
            leases=leases,
            worker_id="w",
            stopping=asyncio.Event(),
        )

    newer_runner = runner(Leases(nc, js, ttl=5.0))
    older_runner = newer_runner if same_process else runner(Leases(nc, js, ttl=5.0))
    try:
        await enqueue(js, controller=controller, key=k, body=body(1))
        [older] = await psub.fetch(1, timeout=5)  # delivered; its worker is slow to go on
        await enqueue(js, controller=controller, key=k, body=body(2))  # replaces request 1
        [newer] = await psub.fetch(1, timeout=5)
        await newer_runner.process(newer)  # runs request 2, acks it, releases the lease

        await older_runner.process(older)
        assert [run.n for run in recorder.of(k)] == [2], "request 1 ran after request 2"
        with pytest.raises(TimeoutError):
            await psub.fetch(1, timeout=3)  # request 1 was acked: it is not delivered again
    finally:
        await psub.unsubscribe()


async def _spread_requests_run_apart_and_newest_last(
    js: JetStreamContext, controller: str, keys: list[ObjectKey], recorder: Recorder, *, n: int
) -> None:
    """Publish ``n`` requests for random ``keys``, spread in time; then check that runs of one
    key never overlapped and that each key's newest request ran last (nothing after it lost)."""
    last: dict[ObjectKey, int] = {}
    for i in range(n):
        key = random.choice(keys)
        await enqueue(js, controller=controller, key=key, body=body(i))
        last[key] = i
        await asyncio.sleep(random.uniform(0, 0.03))  # the scenario: requests spread in time

    def caught_up() -> bool:
        return all(
            any(r.n == i and r.ended is not None for r in recorder.of(key))
            for key, i in last.items()
        )

    await eventually(caught_up, what="a run of each key's newest request")
    assert all(count == 1 for count in recorder.max_active.values()), recorder.max_active
    for key, i in last.items():
        assert recorder.of(key)[-1].n == i


async def test_runs_of_one_key_never_overlap_across_queues_and_none_is_lost(
    nc: Client, controller: str, queues: Any
) -> None:
    js = nc.jetstream()
    keys = [ObjectKey("ns", f"obj-{i}") for i in range(4)]
    recorder = Recorder(sleep=lambda r: random.uniform(0.02, 0.15))
    for _ in range(2):
        await queues(recorder, controller=controller, concurrency=4)
    await _spread_requests_run_apart_and_newest_last(js, controller, keys, recorder, n=150)


async def test_a_process_exclusive_queue_keeps_runs_of_a_key_apart_off_the_lease_bucket(
    nc: Client, controller: str, queues: Any
) -> None:
    """exclusive="process" (the status service's: its writes are conditional on the CR's
    resourceVersion): runs of one key never overlap within the process, the newest request of
    each key runs last, and not one message goes to the lease bucket."""
    js = nc.jetstream()
    bucket_writes: list[str] = []

    async def count(msg: Msg) -> None:
        bucket_writes.append(msg.subject)

    watch = await nc.subscribe(Controller(controller).lease_prefix + ">", cb=count)
    keys = [ObjectKey("ns", f"obj-{i}") for i in range(3)]
    recorder = Recorder(sleep=lambda r: random.uniform(0.02, 0.15))
    await queues(recorder, controller=Controller(controller, exclusive="process"), concurrency=8)
    await _spread_requests_run_apart_and_newest_last(js, controller, keys, recorder, n=80)
    await nc.flush()
    await watch.unsubscribe()
    assert bucket_writes == []


async def test_runs_of_one_key_never_overlap_across_processes(
    nc: Client, controller: str, workers: Workers
) -> None:
    js = nc.jetstream()
    names = ["w1", "w2", "w3"]
    for name in names:
        workers.start(name, "--sleep", "0.05", "--jitter", "0.2", "--concurrency", "3")
    await workers.ready(*names)

    keys = [ObjectKey("ns", f"obj.{i}") for i in range(6)]
    last: dict[str, int] = {}
    for n in range(200):
        key = random.choice(keys)
        await enqueue(js, controller=controller, key=key, body=body(n))
        last[str(key)] = n
        await asyncio.sleep(random.uniform(0, 0.03))  # the scenario: requests spread in time

    def caught_up() -> bool:
        ended = {(f[1], f[4]) for f in workers.lines() if f[0] == "end"}
        return all((key, str(n)) in ended for key, n in last.items())

    await eventually(caught_up, within=60, what="a run of each key's newest request")
    per_key = assert_runs_never_overlap(workers.lines())
    for key, n in last.items():
        assert per_key[key][-1][4] == str(n), f"a run of {key} after its newest request"
    assert len({f[2] for events in per_key.values() for f in events}) >= 2, "one worker did all"


async def test_workers_at_concurrency_one_share_the_requests_evenly_and_keep_busy(
    nc: Client, controller: str, workers: Workers
) -> None:
    """Adding a worker adds its share: 4 processes taking one request at a time split N
    requests for distinct objects about evenly, and finish in about a quarter of the time the
    handlers take (the fleet's time against the handlers' own, both measured in this run)."""
    js = nc.jetstream()
    names = ["w1", "w2", "w3", "w4"]
    for name in names:
        workers.start(name, "--sleep", "0.2", "--concurrency", "1")
    await workers.ready(*names)

    n = 80
    for i in range(n):
        await enqueue(js, controller=controller, key=ObjectKey("ns", f"obj.{i}"), body=body(i))

    def ended() -> list[list[str]]:
        return [f for f in workers.lines() if f[0] == "end"]

    await eventually(lambda: len(ended()) >= n, within=60, what=f"{n} runs")
    runs = [f for f in workers.lines() if f[0] in ("start", "end")]
    assert_runs_never_overlap(runs)
    assert len(ended()) == n, "a request ran twice"
    for name in names:
        # Concurrency 1 holds per worker: a worker that took more than its free slots (pulled
        # ahead) would run them at once, or make them wait while the others idle.
        spans = sorted(
            (float(f[5]), f[0]) for f in runs if f[2] == name and f[0] in ("start", "end")
        )
        kinds = [kind for _, kind in spans]
        assert kinds == ["start", "end"] * (len(kinds) // 2), f"{name} ran two at once"
    shares = {name: sum(1 for f in ended() if f[2] == name) for name in names}
    for share in shares.values():
        assert n / 4 * 0.5 <= share <= n / 4 * 1.5, f"uneven shares: {shares}"

    starts = {f[1]: float(f[5]) for f in runs if f[0] == "start"}
    handler_time = sum(float(f[5]) - starts[f[1]] for f in ended())
    fleet_time = max(float(f[5]) for f in ended()) - min(starts.values())
    assert fleet_time <= 1.3 * handler_time / 4, (
        f"{n} runs took {fleet_time:.2f} s on 4 workers, {fleet_time / (handler_time / 4):.2f}"
        f" times a quarter of the handlers' {handler_time:.2f} s (shares {shares})"
    )


# -- d. retries and permanent errors ----------------------------------------------------------


async def test_transient_errors_are_retried_with_growing_backoff_without_spending_deliveries(
    nc: Client, controller: str, queues: Any
) -> None:
    """More transient failures than max_deliveries: none is counted, the request is retried
    with a growing delay until it succeeds, and nothing is dead-lettered."""
    js = nc.jetstream()
    k = ObjectKey("default", "flaky")

    def fail(request: Request) -> BaseException | None:
        return TransientError("apiserver: 503") if request.retries < 3 else None

    recorder = Recorder(fail=fail)
    await queues(
        recorder, controller=controller, backoff_base=0.4, backoff_cap=10.0, max_deliveries=2
    )
    await enqueue(js, controller=controller, key=k, headers={"traceparent": TRACEPARENT})
    await eventually(lambda: len(recorder.runs) == 4 and recorder.runs[-1].ended is not None)
    # The queue counts a run once it has settled it, a moment after the handler returned.
    await eventually(
        lambda: (
            metric("controller_runtime_reconcile_total", controller=controller, result="success")
            >= 1
        ),
        what="the run that succeeded counted",
    )

    runs = recorder.of(k)
    assert [(r.delivery, r.retries) for r in runs] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    gaps = [b.started - a.started for a, b in itertools.pairwise(runs)]
    # Each wait is at least half its ceiling: 0.4, 0.8, 1.6 seconds.
    for gap, minimum in zip(gaps, [0.2, 0.4, 0.8], strict=True):
        assert gap >= minimum, gaps
    assert metric("workqueue_retries_total", name=controller) == 3
    assert metric("mcop_workqueue_retries_total", controller=controller, kind="transient") == 3
    assert metric("mcop_workqueue_retries_total", controller=controller, kind="failure") == 0
    assert metric("controller_runtime_reconcile_total", controller=controller, result="error") == 3
    assert (
        metric("controller_runtime_reconcile_total", controller=controller, result="success") == 1
    )
    assert metric("controller_runtime_reconcile_errors_total", controller=controller) == 3
    assert await drained(js, controller)
    assert await dead_letters(js, controller) == []


async def test_api_and_nats_outages_are_transient_and_other_api_errors_count(
    nc: Client, controller: str, queues: Any
) -> None:
    """What the clients raise for an outage (API 5xx and 429, a time-out, a closed NATS
    connection, JetStream unavailable) is retried without counting, even with max_deliveries=1;
    an API error that is the request's own (422) counts and is dead-lettered."""
    import nats.errors
    from nats.js.errors import ServiceUnavailableError

    from memcached_operator.shared.kube.client import ApiError

    js = nc.jetstream()
    outage, invalid = ObjectKey("default", "outage"), ObjectKey("default", "invalid")
    outage_errors: list[BaseException] = [
        ApiError(503, "the server is currently unable to handle the request", retry_after=None),
        ApiError(429, "too many requests", retry_after=0.1),
        ApiError(500, "etcdserver: request timed out", retry_after=None),
        TransientError("GET /apis: ClientConnectorError: connection refused"),
        TimeoutError(),
        nats.errors.ConnectionClosedError(),
        ServiceUnavailableError(code=503, err_code=10077, description="maximum bytes exceeded"),
    ]

    def fail(request: Request) -> BaseException | None:
        if request.key == invalid:
            return ApiError(422, "spec.replicas: Invalid value", retry_after=None)
        return outage_errors[request.retries] if request.retries < len(outage_errors) else None

    recorder = Recorder(fail=fail)
    await queues(recorder, controller=controller, backoff_base=0.02, max_deliveries=1)
    await enqueue(js, controller=controller, key=outage)
    await enqueue(js, controller=controller, key=invalid)
    n = len(outage_errors) + 1
    await eventually(lambda: len(recorder.of(outage)) == n and recorder.of(outage)[-1].ended)
    await eventually(lambda: len(recorder.of(invalid)) == 1)

    assert [r.delivery for r in recorder.of(outage)] == [1] * n
    (letter,) = await dead_letters_eventually(js, controller)
    assert letter.subject == subject(DEADLETTER, controller, invalid)
    assert letter.headers is not None
    assert letter.headers[DL_REASON] == MAX_DELIVERIES_EXCEEDED
    assert "spec.replicas: Invalid value" in letter.headers[DL_ERROR]
    kinds = {
        kind: metric("mcop_workqueue_retries_total", controller=controller, kind=kind)
        for kind in ("transient", "failure")
    }
    assert kinds == {"transient": len(outage_errors), "failure": 0}


async def test_failures_of_the_handler_still_count_across_transient_retries(
    nc: Client, controller: str, queues: Any
) -> None:
    """A handler that fails for real every other time, with transient failures in between, is
    dead-lettered after max_deliveries real failures: the retry copies carry the count."""
    js = nc.jetstream()
    k = ObjectKey("default", "buggy")

    def fail(request: Request) -> BaseException | None:
        if len(recorder.of(k)) % 2 == 0:
            return TransientError("apiserver: 503")
        return RuntimeError("handler bug")

    dead: list[Request] = []

    async def on_dead_letter(request: Request, error: Exception) -> None:
        dead.append(request)

    recorder = Recorder(fail=fail)
    await queues(
        recorder,
        controller=controller,
        backoff_base=0.02,
        max_deliveries=3,
        on_dead_letter=on_dead_letter,
    )
    await enqueue(js, controller=controller, key=k)
    await eventually(lambda: bool(dead), what="the dead-letter callback")

    # bug, outage, bug, outage, bug: the third bug is the last.
    runs = recorder.of(k)
    assert [(r.delivery, r.retries) for r in runs] == [(1, 0), (2, 0), (2, 1), (3, 1), (3, 2)]
    (letter,) = await dead_letters_eventually(js, controller)
    assert letter.headers is not None
    assert letter.headers[DL_REASON] == MAX_DELIVERIES_EXCEEDED
    assert letter.headers[DL_DELIVERIES] == "3"
    assert "handler bug" in letter.headers[DL_ERROR]
    assert await drained(js, controller)  # nothing left that could run it again
    assert len(recorder.of(k)) == 5


async def test_retry_after_given_by_the_error_is_honoured(
    nc: Client, controller: str, queues: Any
) -> None:
    k = ObjectKey("default", "throttled")

    def fail(request: Request) -> BaseException | None:
        if request.delivery == 1:
            return TransientError("429 Too Many Requests", retry_after=2.0)
        return None

    recorder = Recorder(fail=fail)
    await queues(recorder, controller=controller, backoff_base=0.05)
    await enqueue(nc.jetstream(), controller=controller, key=k)
    await eventually(lambda: len(recorder.runs) == 2)
    assert recorder.runs[1].started - recorder.runs[0].started >= 2.0


async def test_permanent_error_stops_retrying_and_is_reported(
    nc: Client, controller: str, queues: Any
) -> None:
    js = nc.jetstream()
    k = ObjectKey("default", "invalid")
    reported: list[tuple[Request, PermanentError]] = []

    async def on_permanent_error(request: Request, error: PermanentError) -> None:
        reported.append((request, error))

    recorder = Recorder(fail=lambda r: PermanentError("InvalidSpec", "spec.size must be >= 0"))
    await queues(
        recorder, controller=controller, on_permanent_error=on_permanent_error, backoff_base=0.05
    )
    await enqueue(js, controller=controller, key=k, headers={"traceparent": TRACEPARENT})
    await eventually(lambda: bool(reported), what="the permanent error reported")
    assert await drained(js, controller)  # nothing left that could run it again

    assert len(recorder.runs) == 1
    request, error = reported[0]
    assert request.key == k and request.headers["traceparent"] == TRACEPARENT
    assert (error.reason, error.message) == ("InvalidSpec", "spec.size must be >= 0")
    assert await pending_subjects(js, controller) == {}
    assert await dead_letters(js, controller) == []


async def test_requeue_after_runs_again_later_without_counting_as_a_failure(
    nc: Client, controller: str, queues: Any
) -> None:
    k = ObjectKey("default", "periodic")
    runs: list[tuple[float, Request]] = []

    async def handler(request: Request) -> Result:
        runs.append((time.monotonic(), request))
        return Result(requeue_after=1.0) if len(runs) == 1 else Result()

    await queues(handler, controller=controller, max_deliveries=1)
    js = nc.jetstream()
    await enqueue(js, controller=controller, key=k, headers={"traceparent": TRACEPARENT})
    await eventually(lambda: len(runs) == 2, what="the requeued run")
    assert await drained(js, controller)  # nothing left that could run it a third time

    (first_at, _), (second_at, second) = runs
    assert second_at - first_at >= 1.0
    assert second.key == k and second.headers["traceparent"] == TRACEPARENT
    assert second.delivery == 1  # with max_deliveries=1 anything else is dead-lettered
    total = "controller_runtime_reconcile_total"
    assert metric(total, controller=controller, result="requeue_after") == 1
    assert metric(total, controller=controller, result="success") == 1
    assert await pending_subjects(js, controller) == {}
    assert await dead_letters(js, controller) == []


async def test_a_requeue_nats_refuses_is_redelivered_later_not_logged_as_a_crash(
    nc: Client, controller: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The copy a requeue_after publishes can fail like any publish while a node of the
    stream dies (a CI run of the NATS-cluster test saw it): the request is redelivered after
    the requeue delay instead, with a warning, not an 'unexpected failure' traceback."""
    import logging

    from nats.js.errors import NoStreamResponseError

    from memcached_operator.shared.workqueue.lease import Leases
    from memcached_operator.shared.workqueue.runner import Runner

    real = nc.jetstream()

    class StreamGoneOnce:
        """The real JetStream context, whose first request publish fails as nats-py fails
        one when the stream's node has just died."""

        def __init__(self) -> None:
            self.refused = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def publish(self, subject_: str, *args: Any, **kwargs: Any) -> Any:
            if subject_.startswith("mcop.requests.") and not self.refused:
                self.refused += 1
                raise NoStreamResponseError
            return await real.publish(subject_, *args, **kwargs)

    k = ObjectKey("default", "requeued")
    runs: list[Request] = []

    async def handler(request: Request) -> Result:
        runs.append(request)
        return Result(requeue_after=0.5) if len(runs) == 1 else Result()

    flaky = StreamGoneOnce()
    runner = Runner(
        flaky,  # type: ignore[arg-type]
        controller=Controller(controller),
        settings=QueueSettings(ack_wait=5.0, lease_ttl=5.0),
        handler=handler,
        leases=Leases(nc, real, ttl=5.0),
        worker_id="w",
        stopping=asyncio.Event(),
    )
    await add_consumer(real, controller)
    psub = await real.pull_subscribe_bind(durable=f"mcop-{controller}", stream=REQUESTS_STREAM)
    try:
        await enqueue(real, controller=controller, key=k, body=body(1))
        [first] = await psub.fetch(1, timeout=5)
        with caplog.at_level(logging.WARNING, logger="memcached_operator.shared.workqueue.queue"):
            await runner.process(first)
        assert flaky.refused == 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert errors == [], [r.getMessage() for r in errors]
        assert any("could not publish the requeue" in r.getMessage() for r in caplog.records)

        [again] = await psub.fetch(1, timeout=5)  # the same request, after the delay
        assert json.loads(again.data)["n"] == 1
        await runner.process(again)
        assert len(runs) == 2
        assert await drained(real, controller)
    finally:
        await psub.unsubscribe()


# -- e. dead letters --------------------------------------------------------------------------


async def test_request_failing_every_delivery_is_dead_lettered_and_the_worker_carries_on(
    nc: Client, controller: str, queues: Any
) -> None:
    js = nc.jetstream()
    broken, fine = ObjectKey("team-a", "broken.cache"), ObjectKey("team-a", "fine")
    dead: list[tuple[Request, Exception]] = []

    async def on_dead_letter(request: Request, error: Exception) -> None:
        dead.append((request, error))

    def fail(request: Request) -> BaseException | None:
        return RuntimeError("handler bug: 42") if request.key == broken else None

    recorder = Recorder(fail=fail)
    await queues(
        recorder,
        controller=controller,
        max_deliveries=3,
        backoff_base=0.05,
        on_dead_letter=on_dead_letter,
    )
    headers = {"traceparent": TRACEPARENT, "x-origin": "test"}
    await enqueue(js, controller=controller, key=broken, headers=headers, body=body(7))
    await eventually(lambda: bool(dead), what="the dead-letter callback")

    assert [r.delivery for r in recorder.of(broken)] == [1, 2, 3]
    request, error = dead[0]
    assert request.key == broken and isinstance(error, RuntimeError)
    (letter,) = await dead_letters(js, controller)
    assert letter.subject == subject(DEADLETTER, controller, broken)
    assert letter.data == body(7)
    assert letter.headers is not None
    assert letter.headers["traceparent"] == TRACEPARENT
    assert letter.headers["x-origin"] == "test"
    assert letter.headers[DL_REASON] == MAX_DELIVERIES_EXCEEDED
    assert "handler bug: 42" in letter.headers[DL_ERROR]
    assert letter.headers[DL_DELIVERIES] == "3"
    assert metric("mcop_dead_lettered_total", controller=controller, reason=MAX_DELIVERIES_EXCEEDED)
    assert metric("mcop_workqueue_retries_total", controller=controller, kind="failure") == 2

    await enqueue(js, controller=controller, key=fine)
    await eventually(lambda: bool(recorder.of(fine)), what="the worker handling the next key")
    assert await drained(js, controller)  # nothing left that could run either again
    assert len(recorder.of(broken)) == 3
    assert await pending_subjects(js, controller) == {}


async def test_poison_requests_are_dead_lettered_at_once_with_a_clear_reason(
    nc: Client, controller: str, queues: Any
) -> None:
    js = nc.jetstream()
    dead: list[tuple[Request, Exception]] = []

    async def on_dead_letter(request: Request, error: Exception) -> None:
        dead.append((request, error))

    recorder = Recorder()
    await queues(
        recorder,
        controller=controller,
        required_headers=("ce-id",),
        on_dead_letter=on_dead_letter,
    )
    ok = {"ce-id": "1"}
    prefix = f"mcop.requests.{controller}"
    await js.publish(f"{prefix}.ns.too.many.tokens", b"", headers=ok)
    await js.publish(f"{prefix}.ns.bad~ZZescape", b"", headers=ok)
    await js.publish(f"{prefix}.ns.huge", b"x" * 1_000_000, headers=ok)
    await js.publish(f"{prefix}.ns.garbage", b"\xff\xfe{not json", headers=ok)
    await js.publish(f"{prefix}.ns.array", b"[1, 2]", headers=ok)
    await js.publish(f"{prefix}.ns.no-headers", body(1))
    await enqueue(js, controller=controller, key=ObjectKey("ns", "good"), headers=ok)

    await eventually(lambda: len(recorder.runs) == 1, what="the good request handled")
    await eventually(lambda: len(dead) == 4, what="dead-letter callbacks for requests with a key")
    letters = await dead_letters(js, controller)
    reasons = {m.headers[DL_SUBJECT]: m.headers[DL_REASON] for m in letters if m.headers}
    assert reasons == {
        f"{prefix}.ns.too.many.tokens": UNPARSABLE_SUBJECT,
        f"{prefix}.ns.bad~ZZescape": UNPARSABLE_SUBJECT,
        f"{prefix}.ns.huge": REQUEST_TOO_LARGE,
        f"{prefix}.ns.garbage": MALFORMED_BODY,
        f"{prefix}.ns.array": MALFORMED_BODY,
        f"{prefix}.ns.no-headers": MISSING_HEADER,
    }
    huge = next(m for m in letters if m.headers and m.headers[DL_REASON] == REQUEST_TOO_LARGE)
    assert huge.headers is not None and huge.headers[DL_BODY_TRUNCATED] == "1000000"
    assert len(huge.data) <= 1024
    missing = next(m for m in letters if m.headers and m.headers[DL_REASON] == MISSING_HEADER)
    assert missing.headers is not None and "ce-id" in missing.headers[DL_ERROR]
    assert [r.key for r in recorder.runs] == [ObjectKey("ns", "good")]
    assert await pending_subjects(js, controller) == {}


# -- f. crashes and long runs -----------------------------------------------------------------


async def test_request_of_a_killed_worker_is_redelivered_to_another(
    nc: Client, controller: str, workers: Workers
) -> None:
    js = nc.jetstream()
    workers.start("doomed", "--sleep", "120")
    await workers.ready("doomed")
    k = ObjectKey("default", "survivor")
    await enqueue(js, controller=controller, key=k, body=body(1))
    await eventually(lambda: workers.has("start", "doomed", str(k)), what="the doomed run")

    workers.start("rescuer", "--sleep", "0.1")
    await workers.ready("rescuer")
    workers.procs["doomed"].send_signal(signal.SIGKILL)
    workers.procs["doomed"].wait(timeout=10)

    await eventually(lambda: workers.has("end", "rescuer", str(k)), what="the rescuer's run")
    rescued = [f for f in workers.lines() if f[0] == "start" and f[2] == "rescuer"]
    assert [(f[1], f[3], f[4]) for f in rescued] == [(str(k), "2", "1")]
    assert not workers.has("end", "doomed")
    # The rescuer acks after its handler returns (which is when "end" is written): give the
    # ack a moment to reach the stream.
    assert await drained(js, controller)
    assert await dead_letters(js, controller) == []


async def test_a_request_that_crashes_its_worker_every_time_is_dead_lettered(
    nc: Client, controller: str, workers: Workers
) -> None:
    """A delivery that never completes (the worker dies in it) counts, although the handler
    never raised anything: after max_deliveries crashes the next worker dead-letters it
    instead of running it, and handles the next request."""
    js = nc.jetstream()
    k, fine = ObjectKey("default", "deadly"), ObjectKey("default", "fine")
    await enqueue(js, controller=controller, key=k, body=body(1))
    for i in (1, 2):
        proc = workers.start(f"victim-{i}", "--crash", "--max-deliveries", "2")
        assert await asyncio.to_thread(proc.wait, 30) == 3
        assert workers.has("start", f"victim-{i}", str(k))
    workers.start("survivor", "--max-deliveries", "2", "--sleep", "0")
    (letter,) = await dead_letters_eventually(js, controller, within=30)
    assert letter.subject == subject(DEADLETTER, controller, k)
    assert letter.headers is not None
    assert letter.headers[DL_REASON] == MAX_DELIVERIES_EXCEEDED
    assert letter.headers[DL_DELIVERIES] == "3"
    assert "did not complete" in letter.headers[DL_ERROR]
    assert not workers.has("start", "survivor", str(k))
    await enqueue(js, controller=controller, key=fine, body=body(2))
    await eventually(lambda: workers.has("end", "survivor", str(fine)), what="the next request")


async def test_long_run_keeps_its_message_and_its_lease(
    nc: Client, controller: str, queues: Any
) -> None:
    js = nc.jetstream()
    k = ObjectKey("default", "slow")
    # Five seconds against an ack wait and a lease TTL of 1.5s. Were the message redelivered
    # meanwhile, its delivery count would pass max_deliveries and it would be dead-lettered.
    recorder = Recorder(sleep=lambda r: 5.0 if r.payload()["n"] == 1 else 0.0)
    for _ in range(2):
        await queues(recorder, controller=controller, ack_wait=1.5, lease_ttl=1.5, max_deliveries=2)
    await enqueue(js, controller=controller, key=k, body=body(1))
    await eventually(lambda: len(recorder.runs) == 1, what="the long run")
    await asyncio.sleep(3.5)  # the scenario: the run outlasts the ack wait twice over
    assert (await js.consumer_info(REQUESTS_STREAM, f"mcop-{controller}")).num_redelivered == 0
    await enqueue(js, controller=controller, key=k, body=body(2))
    await eventually(lambda: len(recorder.runs) == 2 and recorder.runs[1].ended is not None)

    first, second = recorder.of(k)
    assert (first.n, first.delivery, second.n) == (1, 1, 2)
    assert first.ended is not None and second.started >= first.ended
    assert first.ended - first.started >= 5.0
    assert await dead_letters(js, controller) == []


# -- g. graceful stop -------------------------------------------------------------------------


async def test_sigterm_finishes_the_run_in_flight_takes_no_new_work_and_exits(
    nc: Client, controller: str, workers: Workers
) -> None:
    js = nc.jetstream()
    proc = workers.start("w", "--sleep", "3")
    await workers.ready("w")
    k, later = ObjectKey("default", "inflight"), ObjectKey("default", "later")
    await enqueue(js, controller=controller, key=k, body=body(1))
    await eventually(lambda: workers.has("start", "w", str(k)), what="the run in flight")

    proc.send_signal(signal.SIGTERM)
    await eventually(lambda: workers.has("stopping", "w"), what="the worker stopping")
    await enqueue(js, controller=controller, key=later, body=body(2))
    rc = await asyncio.to_thread(proc.wait, 30)

    assert rc == 0, workers.stderr("w").read_text()
    assert workers.has("end", "w", str(k))
    assert workers.has("exited", "w")
    assert not workers.has("start", "w", str(later))
    # The finished run was acked; the request that came later waits for the next worker.
    assert list((await pending_subjects(js, controller)).values()) == [1]
    assert subject("requests", controller, later) in await pending_subjects(js, controller)


async def test_a_released_lease_leaves_a_marker_that_expires_and_is_retaken_over_it(
    nc: Client, controller: str
) -> None:
    """Releasing (unacknowledged) leaves a delete marker for about a second (the bucket keeps
    no lease history for every object ever reconciled) naming the request that ran; the
    releasing worker retakes the lease right away over the marker, and any worker after the
    marker expired creates it afresh."""
    from nats.js.errors import NotFoundError

    from memcached_operator.shared.bus.streams import LEASES_STREAM, LEASES_SUBJECT_PREFIX
    from memcached_operator.shared.workqueue.lease import RAN_SEQUENCE
    from memcached_operator.shared.workqueue.lease import Leases as _Leases

    js = nc.jetstream()
    subject_ = f"{LEASES_SUBJECT_PREFIX}{controller}.ns.obj"
    name = subject_.removeprefix(LEASES_SUBJECT_PREFIX)
    mine, other = _Leases(nc, js, ttl=5.0), _Leases(nc, js, ttl=5.0)
    first = await mine.try_acquire(name, b"a")
    assert isinstance(first, int)
    assert await other.try_acquire(name, b"b") is None  # held
    await mine.release(name, first, ran=7)
    again = await mine.try_acquire(name, b"a")
    assert isinstance(again, int) and again > first + 1  # created over its own marker
    await mine.release(name, again, ran=8)

    async def marker() -> bool:
        try:
            stored = await js.get_last_msg(LEASES_STREAM, subject_, direct=True)
        except NotFoundError:
            return False
        headers = stored.headers or {}
        return headers.get("KV-Operation") == "DEL" and headers.get(RAN_SEQUENCE) == "8"

    await await_for(marker, timeout=5, what="the second release's marker", every=0.05)

    async def marker_expired() -> bool:
        try:
            await js.get_last_msg(LEASES_STREAM, subject_, direct=True)
        except NotFoundError:
            return True
        return False

    await await_for(marker_expired, timeout=5, what="the release marker to expire", every=0.2)
    assert await other.try_acquire(name, b"b") is not None


async def test_a_release_of_a_lease_another_run_has_taken_since_leaves_that_run_s_lease(
    nc: Client, controller: str
) -> None:
    """A run whose lease expired (it stalled past the TTL) and which releases it late must not
    free the lease the next run holds now: the unacknowledged delete is only at its own
    revision, so NATS refuses it and the next run keeps the object to itself."""
    from memcached_operator.shared.workqueue.lease import Leases as _Leases

    js = nc.jetstream()
    name = f"{controller}.ns.stalled"
    stalled, next_run, third = (_Leases(nc, js, ttl=1.0) for _ in range(3))
    old = await stalled.try_acquire(name, b"stalled")
    assert isinstance(old, int)

    async def taken() -> bool:
        return isinstance(await next_run.try_acquire(name, b"next"), int)

    await await_for(taken, timeout=5, what="the stalled run's lease to expire", every=0.2)
    await stalled.release(name, old)
    await nc.flush()
    assert await third.try_acquire(name, b"third") is None  # still the next run's


# -- h. taking requests -----------------------------------------------------------------------


async def test_requests_that_reach_a_stopping_queue_go_back_and_run_elsewhere_soon(
    nc: Client, controller: str, queues: Any
) -> None:
    """A request published while a queue stops (its last pull request may still be open) runs
    on another worker in seconds, not after the ack wait, and without using up its deliveries."""
    js = nc.jetstream()
    first = Recorder(sleep=lambda r: 1.0)  # a run in flight while the queue stops
    stopping = await queues(first, controller=controller, concurrency=4, ack_wait=30.0)
    busy, later = ObjectKey("default", "busy"), ObjectKey("default", "later")
    await enqueue(js, controller=controller, key=busy, body=body(1))
    await eventually(lambda: len(first.runs) == 1, what="the run in flight")
    stop = asyncio.create_task(stopping.stop(timeout=10))
    await asyncio.sleep(0.1)
    await enqueue(js, controller=controller, key=later, body=body(2))
    await stop
    assert [run.key for run in first.runs] == [busy]

    second = Recorder()
    handed_back = time.monotonic()
    await queues(second, controller=controller, concurrency=4, ack_wait=30.0)
    await eventually(lambda: len(second.runs) == 1, within=10, what="the request run elsewhere")
    assert time.monotonic() - handed_back < 10
    assert [(run.key, run.delivery) for run in second.runs] == [(later, 2)]


async def test_a_queue_whose_consumer_was_deleted_creates_it_again_and_goes_on(
    nc: Client, controller: str, queues: Any
) -> None:
    """Someone deleted the controller's consumer (by hand, or a stream restored from a
    backup): the queue notices when its pulls fail, creates the consumer again and runs the
    requests published meanwhile."""

    js = nc.jetstream()
    recorder = Recorder()
    await queues(recorder, controller=controller, concurrency=2, fetch_timeout=0.5)
    await enqueue(js, controller=controller, key=ObjectKey("default", "before"), body=body(1))
    await eventually(lambda: len(recorder.runs) == 1, what="the first run")
    await js.delete_consumer(REQUESTS_STREAM, Controller(controller).durable)
    await enqueue(js, controller=controller, key=ObjectKey("default", "after"), body=body(2))
    await eventually(lambda: len(recorder.runs) == 2, within=15, what="the run after")
    assert recorder.runs[1].key == ObjectKey("default", "after")
