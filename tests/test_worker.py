"""One way to start a worker (app/worker.py): the container, `livepost serve`, `livepost
cluster` and the tests run the same uvicorn options, and `livepost cluster` restarts a worker
that dies."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn.main

from app.config import Settings
from app.worker import uvicorn_command, uvicorn_options
from tests.raw_websocket import CLOSE, RawWebSocket, close_code
from tests.test_slow_clients import Worker

MIB = 1024 * 1024


@pytest.fixture
async def container_worker(tmp_path: Path) -> AsyncIterator[Worker]:
    """A worker started by the Dockerfile's CMD (tests/container_support.py)."""
    running = Worker(tmp_path, LOG_LEVEL="info")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_the_container_refuses_a_1_mib_frame_without_buffering_it(
    container_worker: Worker,
) -> None:
    """The frame's header announces 1 MiB; the worker answers 1009 and ends the connection
    after the first 128 KiB, the rest never sent: it did not wait to buffer the frame (with
    uvicorn's 16 MiB default it would, and this would time out)."""
    client = await RawWebSocket.connect(container_worker.port)
    try:
        key = os.urandom(4)
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, MIB) + key
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10):
            await loop.sock_sendall(client.sock, head + b"x" * (128 * 1024))
        opcode, payload = await client.recv_frame(timeout=5)
        assert (opcode, close_code(payload)) == (CLOSE, 1009)
        assert await client.read_to_end(timeout=5) == ([], None)  # and the socket is closed
    finally:
        client.close()


def test_the_clusters_command_line_means_the_same_options() -> None:
    """`livepost cluster` starts `python -m uvicorn` with flags: uvicorn reads them back as
    exactly the options `livepost worker` and `livepost serve` pass."""
    settings = Settings(ws_max_frame_bytes=1000, shutdown_grace_seconds=3, log_level="warning")
    command = uvicorn_command(settings, host="127.0.0.1", port=8123)
    assert command[1:3] == ["-m", "uvicorn"]
    parsed = uvicorn.main.make_context("uvicorn", command[3:]).params  # type: ignore[attr-defined]
    options = uvicorn_options(settings)
    assert options["ws_max_size"] == 2024
    assert {name: parsed[name] for name in options} == options
    assert (parsed["app"], parsed["host"], parsed["port"]) == ("app.main:app", "127.0.0.1", 8123)

