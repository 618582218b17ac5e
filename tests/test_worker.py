"""One way to start a worker (app/worker.py): the container, `livepost serve`, `livepost
cluster` and the tests run the same uvicorn options, and `livepost cluster` restarts a worker
that dies."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn.main
from websockets.exceptions import InvalidStatus

from app.cli.cluster import free_port
from app.config import Settings
from app.worker import uvicorn_command, uvicorn_options
from tests.raw_websocket import CLOSE, RawWebSocket, close_code
from tests.support import CLI_COMMAND, CLUSTER_SECRET, Endpoint, unique
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


# --- `livepost cluster` restarts a worker that dies -----------------------------------------


async def test_the_cluster_restarts_a_worker_that_dies(tmp_path: Path) -> None:
    """SIGKILL a worker of a running `livepost cluster`: it says which worker died and how,
    and the worker serves again on its port, a new process."""
    redis_url = os.environ.get("LIVEPOST_TEST_REDIS_URL")
    if not redis_url:
        if os.environ.get("LIVEPOST_REQUIRE_SERVICES") == "1":
            pytest.fail("Redis is required but LIVEPOST_TEST_REDIS_URL is unset")
        pytest.skip("set LIVEPOST_TEST_REDIS_URL to run `livepost cluster`")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'livepost.db'}",
        "REDIS_URL": redis_url,
        "JWT_SECRET": CLUSTER_SECRET,
        "CHANNEL_PREFIX": unique("lpw"),
        "LOG_LEVEL": "warning",
    }
    log = tmp_path / "cluster.log"
    command = [*CLI_COMMAND, "cluster", "--workers", "1", "--no-nginx", "--worker-port", str(port)]
    cluster = await asyncio.to_thread(start_process, command, env, log)
    endpoint = Endpoint(f"http://127.0.0.1:{port}")
    try:
        # Started and supervising once it lists its workers.
        await wait_for_output(cluster, log, f"worker  http://127.0.0.1:{port}", 60)
        first = await serving_pid(endpoint, cluster, log)
        os.kill(first, signal.SIGKILL)
        died = f"worker 0 (http://127.0.0.1:{port}, pid {first}) died: killed by SIGKILL"
        await wait_for_output(cluster, log, died, 10)
        second = await serving_pid(endpoint, cluster, log)
        assert second != first
        await wait_for_output(cluster, log, f"worker 0 restarted (pid {second})", 1)
    finally:
        await endpoint.close_clients()
        if cluster.poll() is None:
            cluster.send_signal(signal.SIGTERM)
            await asyncio.to_thread(cluster.wait, 30)
    assert cluster.returncode == 0, await asyncio.to_thread(log.read_text)


def start_process(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # The child keeps its own copy of the log file.
    with open(log, "ab") as output:
        return subprocess.Popen(
            command, env=env, cwd=log.parent, stdout=output, stderr=subprocess.STDOUT
        )


async def wait_for_output(
    process: subprocess.Popen[bytes], log: Path, text: str, within: float
) -> None:
    """Until the running process has written text to its log (at most `within` seconds)."""
    async with asyncio.timeout(within):
        while text not in (output := await asyncio.to_thread(log.read_text)):
            assert process.poll() is None, output
            await asyncio.sleep(0.05)  # polling a file another process writes


async def serving_pid(endpoint: Endpoint, cluster: subprocess.Popen[bytes], log: Path) -> int:
    """The pid of the worker behind endpoint once it answers a request on a WebSocket (its
    handshake names the worker)."""
    async with asyncio.timeout(30):
        while True:
            assert cluster.poll() is None, await asyncio.to_thread(log.read_text)
            try:
                client = await endpoint.connect()
            except (OSError, InvalidStatus):
                await asyncio.sleep(0.1)  # polling a starting process
                continue
            reply = await client.ask({"action": "list", "limit": 1, "request_id": 1})
            assert reply["response_status"] == 200, reply
            await client.close()
            response = client.connection.response
            assert response is not None
            return int(response.headers["x-livepost-worker"])
