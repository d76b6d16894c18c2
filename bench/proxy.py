"""A TCP proxy that adds latency, so the API server looks as far away as in a real cluster.

Every chunk a client sends reaches the server `latency` seconds later (and its order is kept);
the answers come back at once, so each request/response round trip gains exactly one latency,
as a one-way delay of 20 ms on the path to the API server would give. TLS passes through
untouched: clients verify the API server's certificate (which names 127.0.0.1) end to end.
Chunks are delayed independently, not one after another, so many requests in flight on many
connections each pay the latency once — it delays, it does not limit bandwidth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time


class LatencyProxy:
    """Listens on 127.0.0.1:`port` (0 picks one) and forwards to `upstream_port`."""

    def __init__(self, *, upstream_port: int, latency: float, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.latency = latency
        self.port = port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._delayed(client_r, server_w), self._pump(server_r, client_w))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a connection ends, or the proxy stops: either way, close both sides
        finally:
            for writer in (client_w, server_w):
                writer.close()
            self._tasks.discard(task)

    async def _delayed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to server: each chunk is written `latency` after it was read."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not await _forward(writer, data):
                    return

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + self.latency, data))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _forward(writer, await reader.read(65536)):
            pass


async def _forward(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Write one chunk read from the other side; at its end (no data), pass the EOF on and
    return False."""
    if not data:
        with contextlib.suppress(OSError):
            writer.write_eof()
        return False
    writer.write(data)
    await writer.drain()
    return True


async def _serve(*, port: int, upstream_port: int, latency: float) -> None:
    proxy = LatencyProxy(upstream_port=upstream_port, latency=latency, port=port)
    await proxy.start()
    print(f"proxy listening on 127.0.0.1:{proxy.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()


def main() -> None:
    """Run the proxy as its own process, so its work does not share the harness's loop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, required=True)
    args = parser.parse_args()
    asyncio.run(
        _serve(port=args.port, upstream_port=args.upstream_port, latency=args.latency_ms / 1000)
    )


if __name__ == "__main__":
    main()
