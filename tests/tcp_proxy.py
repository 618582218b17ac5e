"""A loopback TCP proxy the tests cut and restore, to take a server away from one process only
(PostgreSQL from a worker, Redis from one worker of two).

TcpProxy runs on the test's event loop; ThreadedTcpProxy runs one on a thread of its own, for
fixtures that outlive a test's loop (a module's cluster of worker processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from tests.support import TIMEOUT


class TcpProxy:
    """A loopback TCP proxy to (host, port) that can be stopped and started again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.frozen = False

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut every live one (RST), as a crashed server would."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self.frozen = False
        async with asyncio.timeout(TIMEOUT):
            await self._server.wait_closed()
            for pipe in list(self._pipes):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pipe
        self._server = None

    def freeze(self) -> None:
        """Keep every connection open but let nothing through, new ones included: a server
        that hangs, or a network path that silently drops packets."""
        self.frozen = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.frozen:  # accepted, never answered; stop() aborts it
            self._writers.add(writer)
            return
        try:
            async with asyncio.timeout(5):
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, upstream_writer)),
            asyncio.create_task(self._pipe(upstream_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for end in (writer, upstream_writer):
                end.transport.abort()
                self._writers.discard(end)
            for pipe in pipes:
                pipe.cancel()
                self._pipes.discard(pipe)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not self.frozen:
                    writer.write(data)
                    await writer.drain()


class ThreadedTcpProxy:
    """A TcpProxy on its own thread and event loop; the same operations, called from any
    thread (they return once done)."""

    def __init__(self, host: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = TcpProxy(host, port)
        self.start()

    @property
    def port(self) -> int:
        return self.proxy.port

    def _call(self, operation: Any) -> None:
        asyncio.run_coroutine_threadsafe(operation, self._loop).result(TIMEOUT + 5)

    def start(self) -> None:
        self._call(self.proxy.start())

    def stop(self) -> None:
        """Refuse new connections and cut every live one (RST)."""
        self._call(self.proxy.stop())

    def close(self) -> None:
        if self.proxy.running:
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        self._loop.close()
