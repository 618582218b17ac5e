"""SIGTERM: sockets close with 1001 after their request, committed writes all publish."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.cli.cluster import ROOT, Cluster, free_port
from app.migrations import upgrade_to_head
from app.pubsub.channels import channel_for
from app.worker import WS_PROTOCOL
from tests.cluster_support import running_cluster
from tests.support import TIMEOUT, Endpoint, barrier, sqlite_server, subscribe, unique


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with running_cluster(2, nginx=False, prefix=unique("lpg")) as deployment:
        yield deployment


async def stopped_gracefully(process: subprocess.Popen[bytes], log: Path | None = None) -> bool:
    """The process ended through uvicorn's shutdown, which re-raises the SIGTERM it caught
    (so the status says "terminated by SIGTERM"); at log level info its log says so too."""
    async with asyncio.timeout(30):
        while process.poll() is None:  # noqa: ASYNC110  (a process, not an event)
            await asyncio.sleep(0.05)
    if log is not None and "Finished server process" not in await asyncio.to_thread(log.read_text):
        return False
    return process.returncode in (0, -signal.SIGTERM)


def start_worker(
    port: int, env: dict[str, str], log: Path, *options: str
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), *options],
            env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.mark.parametrize("ws", ["auto", WS_PROTOCOL])
async def test_single_worker_closes_sockets_with_1001(tmp_path: Path, ws: str) -> None:
    """The embedded default (SQLite, in-process broker) as `uvicorn app.main:app` runs it,
    with uvicorn's own WebSocket protocol (ASGI `send`) and with livepost's."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'stop.db'}"
    await asyncio.to_thread(upgrade_to_head, database)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database, "JWT_SECRET": "stop-" + "s" * 32}
    log = tmp_path / "worker.log"
    process = start_worker(port, env, log, "--ws", ws)
    try:
        endpoint = Endpoint(f"http://127.0.0.1:{port}")
        await ready(endpoint)
        user = await endpoint.user()
        clients = [await endpoint.connect(user) for _ in range(3)]
        await subscribe(clients[0], unique("t"), 1)
        process.send_signal(signal.SIGTERM)
        assert [await client.close_code() for client in clients] == [1001, 1001, 1001]
        assert await stopped_gracefully(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("ws", ["auto", WS_PROTOCOL])
async def test_uvicorns_own_1012_close_is_logged_as_the_servers(tmp_path: Path, ws: str) -> None:
    """Ctrl-C skips the graceful stop: uvicorn closes every socket with 1012 itself, and the
    close line must say the server closed it, not the client."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'restart.db'}"
    await asyncio.to_thread(upgrade_to_head, database)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database, "JWT_SECRET": "stop-" + "s" * 32}
    env |= {"LOG_FORMAT": "json", "LOG_LEVEL": "info"}
    log = tmp_path / "worker.log"
    process = start_worker(port, env, log, "--ws", ws)
    try:
        endpoint = Endpoint(f"http://127.0.0.1:{port}")
        await ready(endpoint)
        client = await endpoint.connect(await endpoint.user())
        process.send_signal(signal.SIGINT)
        assert await client.close_code() == 1012
        async with asyncio.timeout(30):
            while process.poll() is None:  # noqa: ASYNC110  (a process, not an event)
                await asyncio.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    closed = [
        entry for entry in map(json.loads, lines) if entry["message"].startswith("websocket closed")
    ]
    assert [(e["message"], e["close_code"], e["closed_by"]) for e in closed] == [
        ("websocket closed (1012)", 1012, "server")
    ]


async def ready(endpoint: Endpoint) -> None:
    """Wait until a starting worker answers /readyz."""
    async with asyncio.timeout(30):
        while True:
            try:
                async with endpoint.http() as http:
                    if (await http.get("/readyz")).status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)  # polling a starting process


async def test_a_stopping_worker_refuses_new_sockets_with_503(tmp_path: Path) -> None:
    """A 503, which clients and balancers retry elsewhere, not the 403 of a refused token."""
    async with sqlite_server(tmp_path) as server:
        endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
        user = await endpoint.user()
        server.runtime.admission.closing = True  # what SIGTERM's first step sets
        with pytest.raises(InvalidStatus) as refused:
            await endpoint.connect(user)
        assert refused.value.response.status_code == 503
        assert b"stopping" in refused.value.response.body


async def test_every_committed_write_is_published_when_a_worker_stops(
    cluster: Cluster, workers: list[Endpoint]
) -> None:
    stopping, staying = workers
    user = await staying.user()
    tag = unique("stop")
    watcher = await staying.connect(user)  # on the worker that stays
    await subscribe(watcher, tag, "w")
    local = await stopping.connect(user)  # a subscriber on the worker that stops
    await subscribe(local, tag, "l")
    writer = await stopping.connect(user)

    # Pipeline many writes, then stop the worker while they are being answered.
    total = 300
    for n in range(total):
        await writer.send({"action": "create", "data": {"body": f"#{tag} {n}"}, "request_id": n})
    answered = [await writer.recv() for _ in range(5)]
    cluster.workers[0].send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                frame = await writer.recv()
                if "response_status" in frame:
                    answered.append(frame)
    except (ConnectionClosed, TimeoutError):
        pass
    assert writer.connection.close_code == 1001
    assert await local.close_code() == 1001
    assert await stopped_gracefully(cluster.workers[0])  # type: ignore[arg-type]
    assert 5 <= len(answered) < total  # it really stopped part-way

    # Every reply the writer got is a committed post; every committed post was published.
    async with staying.http() as http:
        listed = (await http.get("/posts", params={"body_contains": f"#{tag} "})).json()
    committed = {post["pk"] for post in listed}
    assert {
        reply["data"]["pk"] for reply in answered if reply["response_status"] == 201
    } <= committed
    events: list[int] = []
    while len(events) < len(committed):
        event = await watcher.recv()
        assert event["action"] == "create"
        events.append(event["pk"])
    assert sorted(events) == sorted(committed)
    await barrier(staying, user, watcher)  # and nothing else arrived

    # The stopped worker's Redis subscription went with it: only the staying one is left.
    async with Redis.from_url(cluster.env["REDIS_URL"]) as redis:
        channel = channel_for(cluster.env["CHANNEL_PREFIX"], tag)
        assert dict(await redis.pubsub_numsub(channel)) == {channel.encode(): 1}
