"""A worker process for the work-queue tests: a KeyedWorkQueue whose handler records its runs.

Every run appends ``start <key> <worker> <delivery> <n> <time>`` and, unless killed, ``end
...`` to the log file given as an argument (``n`` is the request body's ``n``, ``time`` the
wall clock in seconds, so a test can set the handlers' own time against the fleet's). Each line is one write to
a file opened with O_APPEND, so the lines of several processes interleave in the order they
happened: a test can check that the runs of one key never overlap anywhere in the fleet.
SIGTERM stops the queue the way the services do, and the process exits 0. With ``--crash`` the
process dies (exit 3, nothing settled) in every run it starts, the way a handler that crashes
its worker would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import time

import nats

from memcached_operator.shared.workqueue.queue import KeyedWorkQueue
from memcached_operator.shared.workqueue.settings import QueueSettings
from memcached_operator.shared.workqueue.types import Request, Result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--controller", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--sleep", type=float, default=0.1, help="seconds each run takes")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this much longer")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--ack-wait", type=float, default=2.0)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--max-deliveries", type=int, default=10)
    parser.add_argument("--crash", action="store_true", help="die in every run")
    asyncio.run(run(parser.parse_args()))


async def run(args: argparse.Namespace) -> None:
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(event: str, key: object = "-", delivery: int = 0, n: object = "-") -> None:
        os.write(fd, f"{event} {key} {args.worker} {delivery} {n} {time.time():.6f}\n".encode())

    async def handler(request: Request) -> Result:
        n = request.payload().get("n", "-")
        record("start", request.key, request.delivery, n)
        if args.crash:
            os._exit(3)
        await asyncio.sleep(args.sleep + random.random() * args.jitter)
        record("end", request.key, request.delivery, n)
        return Result()

    nc = await nats.connect(args.url)
    queue = KeyedWorkQueue(
        nc,
        controller=args.controller,
        settings=QueueSettings(
            concurrency=args.concurrency,
            ack_wait=args.ack_wait,
            lease_ttl=args.lease_ttl,
            max_deliveries=args.max_deliveries,
        ),
        worker_id=args.worker,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await queue.start(handler)
    record("ready")
    await stop.wait()
    record("stopping")
    await queue.stop()
    await nc.close()
    record("exited")
    os.close(fd)


if __name__ == "__main__":
    main()
