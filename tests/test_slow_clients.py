"""Clients that stop reading: bounded per-connection queues, closed with 1013, memory bounded.

The end-to-end scenario runs against a real uvicorn worker process so its resident memory
can be read from /proc. The slow clients are bare sockets with a tiny receive buffer that
never read once subscribed: the kernel's buffers on both sides fill, then uvicorn's transport
buffer, then the connection's outgoing queue, which overflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.cluster import free_port
from app.config import Settings
from app.migrations import upgrade_to_head
from app.protocol.outgoing import Outgoing
from app.worker import WS_PROTOCOL
from tests.container_support import container_command
from tests.raw_websocket import RawWebSocket
from tests.support import (
    Endpoint,
    Server,
    User,
    WsClient,
    event,
    sqlite_server,
    subscribe,
    subscribed,
    unique,
)

SECRET = "slow-client-secret-" + "z" * 32
QUEUE_SIZE = 256
# One writer pipelines thousands of requests: the rate limits are tested elsewhere.
GENEROUS: dict[str, Any] = {
    "ws_rate_per_second": 1_000_000.0,
    "ws_rate_burst": 1_000_000,
    "login_failures_per_username": 1_000_000,
    "login_failures_per_ip": 1_000_000,
    "registrations_per_ip": 1_000_000,
}
# An astral character: 4 UTF-8 bytes on the wire, and every frame string holding it takes 4
# bytes per character in the worker. 256 of them make each event frame ~1.1 kB, so a few
# thousand events get past the kernel's socket buffers (which grow to a few MB) into the
# outgoing queue.
FILLER = "\U0001f984"
WARMUP_EVENTS = 3000
FLOOD_EVENTS = 8000
SLOW_CLIENTS = 10
RSS_GROWTH_LIMIT_KB = 30 * 1024
OVERFLOW_LOG = "closed a connection that stopped reading (outgoing queue full)"
# Longer than the second the server used to wait for a stalled socket to take a close frame,
# well within the closing handshake's 10 s.
CLIENT_AWAY_SECONDS = 3.0


def body_for(tag: str) -> str:
    """A 256-character body tagged #tag (the longest a post may be)."""
    head = f"#{tag} "
    return head + FILLER * (256 - len(head))


# --- the worker process ---------------------------------------------------------------------


class Worker:
    """One real uvicorn worker (embedded stack: SQLite file, in-process broker)."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.log_path = tmp / "worker.log"
        self.database_url = f"sqlite+aiosqlite:///{tmp / 'livepost.db'}"
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": "",
            "JWT_SECRET": SECRET,
            "CHANNEL_PREFIX": unique("lps"),
            "WS_QUEUE_SIZE": str(QUEUE_SIZE),
            "LOG_LEVEL": "warning",
            # glibc gives every thread (aiosqlite runs one per connection) its own malloc
            # arena, whose high-water mark steps up by tens of MB at unpredictable moments even
            # with no slow client at all; two arenas keep the figure about what livepost holds.
            "MALLOC_ARENA_MAX": "2",
            **{name.upper(): str(value) for name, value in GENEROUS.items()},
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = Endpoint(f"http://127.0.0.1:{self.port}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The Dockerfile's CMD, as the container runs it; the child keeps its own copy of the
        # log file.
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                container_command(),
                env=self.env | {"HOST": "127.0.0.1", "PORT": str(self.port)},
                cwd=self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        await asyncio.to_thread(upgrade_to_head, self.database_url)
        process = self.process = await asyncio.to_thread(self._spawn)
        async with asyncio.timeout(30), httpx.AsyncClient(timeout=1.0) as http:
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"worker exited: {self.log_path.read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.endpoint.base_url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)  # polling a starting process, not awaiting an event

    def memory_kb(self, field: str = "VmRSS") -> int:
        """A /proc/<pid>/status figure, in kB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} for {self.pid}")

    def log_lines(self, message: str) -> int:
        """How many of the worker's log lines carry this message."""
        count = 0
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("message") == message:
                    count += 1
        return count

    async def wait_exit(self, timeout: float) -> int | None:  # noqa: ASYNC109
        """The exit status, or None if the process is still running after timeout seconds."""
        assert self.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return await asyncio.to_thread(self.process.wait, timeout)
        return None

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        if await self.wait_exit(15) is None:
            self.process.kill()
            await self.wait_exit(10)


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    running = Worker(tmp_path)
    await running.start()
    try:
        yield running
    finally:
        await running.endpoint.close_clients()
        await running.stop()


# --- clients --------------------------------------------------------------------------------


async def slow_client(port: int, user: User, tag: str, request_id: str) -> RawWebSocket:
    """A client that subscribes to tag, reads the reply, and from then on reads nothing."""
    client = await RawWebSocket.connect(port, f"?token={user.token}", receive_buffer=4096)
    await client.send_json(
        {"action": "subscribe_to_hashtag", "hashtag": tag, "request_id": request_id}
    )
    reply = await client.recv_json()
    assert reply == subscribed(reply, request_id)
    return client


async def publish(writer: WsClient, user: User, body: str, count: int) -> list[dict[str, Any]]:
    """Create `count` posts through one pipelined connection; the posts, in commit order."""

    async def send_all() -> None:
        for index in range(count):
            async with asyncio.timeout(10):
                await writer.send({"action": "create", "data": {"body": body}, "request_id": index})

    sender = asyncio.create_task(send_all())
    posts: list[dict[str, Any]] = []
    try:
        for index in range(count):
            reply = await writer.recv()
            post = reply.get("data") or {}
            assert reply == {
                "errors": [],
                "data": {
                    "pk": post.get("pk"),
                    "author": user.id,
                    "body": body,
                    "created_at": post.get("created_at"),
                    "version": 1,
                },
                "action": "create",
                "response_status": 201,
                "request_id": index,
            }
            posts.append(post)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    return posts


async def receive_events(client: WsClient, count: int) -> list[tuple[dict[str, Any], float]]:
    """The next `count` frames with the second each arrived (epoch time)."""
    frames = []
    for _ in range(count):
        frame = await client.recv()
        frames.append((frame, time.time()))
    return frames


def assert_events(
    received: list[tuple[dict[str, Any], float]], posts: list[dict[str, Any]], request_id: str
) -> list[float]:
    """Every post's create event, in order, whole; returns each event's delivery latency
    (from the post's created_at, stamped by the worker, to its arrival here)."""
    assert [frame for frame, _ in received] == [
        event("create", post["pk"], post, request_id) for post in posts
    ]
    return [
        arrived - datetime.fromisoformat(frame["data"]["created_at"]).timestamp()
        for frame, arrived in received
    ]


def assert_prefix(frames: list[Any], posts: list[dict[str, Any]], request_id: str) -> None:
    """What a slow client got before the server gave up on it: the first events, in order,
    none skipped, and not all of them."""
    assert 0 < len(frames) < len(posts), len(frames)
    assert frames == [
        event("create", post["pk"], post, request_id) for post in posts[: len(frames)]
    ]


async def sample_rss(worker: Worker, samples: list[int]) -> None:
    while True:
        samples.append(worker.memory_kb())
        await asyncio.sleep(0.01)  # a sampling period, not a wait for an event


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f} MiB"


# --- the end-to-end scenario ----------------------------------------------------------------


async def test_clients_that_never_read_are_closed_and_memory_stays_bounded(
    worker: Worker,
) -> None:
    endpoint = worker.endpoint
    user = await endpoint.user()
    tag = unique("flood")
    body = body_for(tag)
    normal = await endpoint.connect(user)
    await subscribe(normal, tag, "normal")
    writer = await endpoint.connect(user)

    # Warm-up on the same worker without slow clients: the allocator's pools, the caches and
    # the normal subscriber's latency when nobody stalls.
    receiving = asyncio.create_task(receive_events(normal, WARMUP_EVENTS))
    posts = await publish(writer, user, body, WARMUP_EVENTS)
    warm_latency = assert_events(await receiving, posts, "normal")
    baseline = worker.memory_kb()

    slow = [
        await slow_client(worker.port, user, tag, f"slow-{index}") for index in range(SLOW_CLIENTS)
    ]
    samples: list[int] = [baseline]
    sampler = asyncio.create_task(sample_rss(worker, samples))
    try:
        started = time.monotonic()
        receiving = asyncio.create_task(receive_events(normal, FLOOD_EVENTS))
        posts = await publish(writer, user, body, FLOOD_EVENTS)
        flooded = await receiving
        flood_latency = assert_events(flooded, posts, "normal")
        elapsed = time.monotonic() - started
        # The worker gave up on every slow client (its queue overflowed) while they read
        # nothing: polling the worker's log, a file, for what the worker already did.
        async with asyncio.timeout(10):
            while worker.log_lines(OVERFLOW_LOG) < SLOW_CLIENTS:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        after = worker.memory_kb()
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    peak = max(samples)

    delivered, codes = [], []
    for index, client in enumerate(slow):
        try:
            frames, code = await client.read_to_end(timeout=60)
        finally:
            client.close()
        # The close frame (1013) is queued behind everything the socket already holds; when
        # the worker cannot write it, it ends the connection without one.
        assert code in (1013, None), code
        assert_prefix(frames, posts, f"slow-{index}")
        delivered.append(len(frames))
        codes.append(code)

    dropped = sum(FLOOD_EVENTS - count for count in delivered)
    frame = json.dumps(
        {**flooded[0][0], "request_id": "slow-0"},  # as the slow clients' first event
        ensure_ascii=False,
        separators=(",", ":"),
    )
    wire, held = dropped * len(frame.encode()), dropped * sys.getsizeof(frame)
    print(
        f"\n[slow clients] {SLOW_CLIENTS} never-reading clients, {FLOOD_EVENTS} events of "
        f"{len(body)} chars in {elapsed:.1f}s, queue {QUEUE_SIZE} frames;"
        f"\n  worker VmRSS: baseline {mib(baseline)}, peak {mib(peak)} "
        f"(+{mib(peak - baseline)}), after {mib(after)} (+{mib(after - baseline)})"
        f"\n  frames delivered per slow client before the close: {delivered} "
        f"(close frames: {codes}); "
        f"dropped instead of buffered: {dropped} frames ({mib(wire / 1024)} on the wire, "
        f"{mib(held / 1024)} as Python strings)"
        f"\n  normal subscriber latency: warm-up median "
        f"{statistics.median(warm_latency) * 1000:.1f} ms / max "
        f"{max(warm_latency) * 1000:.1f} ms; flood median "
        f"{statistics.median(flood_latency) * 1000:.1f} ms / max "
        f"{max(flood_latency) * 1000:.1f} ms"
    )
    assert peak - baseline < RSS_GROWTH_LIMIT_KB, (baseline, peak)
    # No added delay for the normal subscriber: a stall behind a slow client would show as a
    # missing event (timeout) above, or as latency far beyond the warm-up's.
    assert statistics.median(flood_latency) < max(5 * statistics.median(warm_latency), 0.05)


async def test_a_worker_with_a_client_that_never_reads_still_stops(tmp_path: Path) -> None:
    """SIGTERM ends the worker even while a client holds a socket it never reads.

    The worker is started by the Dockerfile's CMD. uvicorn's shutdown closes each
    connection's transport, which waits for its write buffer to drain, and then waits for every
    connection to be gone, with no time limit unless --timeout-graceful-shutdown is given."""
    running = Worker(tmp_path, SHUTDOWN_GRACE_SECONDS="1")
    await running.start()
    client: RawWebSocket | None = None
    try:
        user = await running.endpoint.user()
        tag = unique("stuck")
        client = await slow_client(running.port, user, tag, "stuck")
        writer = await running.endpoint.connect(user)
        posts = await publish(writer, user, body_for(tag), FLOOD_EVENTS // 2)
        await running.endpoint.close_clients()
        async with asyncio.timeout(10):
            while running.log_lines(OVERFLOW_LOG) < 1:  # noqa: ASYNC110 (polling a log file)
                await asyncio.sleep(0.05)

        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        # The grace is 1 s; a few more for uvicorn's own shutdown and the interpreter's exit.
        status = await running.wait_exit(8)
        assert status is not None, "the worker is still running 8 s after SIGTERM"
        frames, _code = await client.read_to_end(timeout=30)
        assert_prefix(frames, posts, "stuck")
    finally:
        if client is not None:
            client.close()
        await running.stop()


# --- the same, in process: the hub lets go of an overflowing connection ---------------------


async def test_an_overflowing_connection_leaves_the_hub_while_still_unread(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'livepost.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    settings = Settings(
        database_url=url,
        jwt_secret=SECRET,
        channel_prefix=unique("lpo"),
        ws_queue_size=64,
        log_level="warning",
        **GENEROUS,
    )
    server = Server(settings)
    await server.start()
    endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
    hub = server.runtime.hub
    client: RawWebSocket | None = None
    try:
        user = await endpoint.user()
        tag, own = unique("flood"), unique("own")
        body = body_for(tag)
        client = await slow_client(server.port, user, tag, "slow")
        await client.send_json({"action": "subscribe_to_hashtag", "hashtag": own})
        assert (await client.recv_json())["response_status"] == 201
        normal = await endpoint.connect(user)
        await subscribe(normal, tag, "normal")
        writer = await endpoint.connect(user)
        assert {tag, own} <= hub.local_tags

        # Publish in batches until the hub no longer holds the slow connection's own tag:
        # its queue overflowed and the connection let go of its subscriptions.
        posts: list[dict[str, Any]] = []
        while own in hub.local_tags:
            assert len(posts) < 30_000, "the slow connection never overflowed"
            receiving = asyncio.create_task(receive_events(normal, 500))
            batch = await publish(writer, user, body, 500)
            assert_events(await receiving, batch, "normal")
            posts += batch
        assert tag in hub.local_tags  # the normal subscriber's

        frames, code = await client.read_to_end(timeout=60)
        assert code == 1013
        assert_prefix(frames, posts, "slow")
    finally:
        if client is not None:
            client.close()
        await endpoint.close_clients()
        await server.stop()


@pytest.mark.parametrize("ws", [WS_PROTOCOL, "websockets-sansio"])
async def test_a_client_that_fell_behind_reads_its_events_then_1013(
    tmp_path: Path, ws: str
) -> None:
    """A client with a tiny receive buffer stops reading until its queue overflows, and for
    CLIENT_AWAY_SECONDS more, then reads again: it gets every event the socket held for it, in
    order, then the 1013 close frame (not a connection cut without one), and its close reply
    ends the connection. Frames go straight to the socket under livepost's protocol, through
    ASGI under uvicorn's own."""
    async with sqlite_server(
        tmp_path, uvicorn_options={"ws": ws}, ws_queue_size=64, **GENEROUS
    ) as server:
        endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
        hub = server.runtime.hub
        client: RawWebSocket | None = None
        try:
            user = await endpoint.user()
            tag, own = unique("behind"), unique("own")
            client = await slow_client(server.port, user, tag, "slow")
            await client.send_json({"action": "subscribe_to_hashtag", "hashtag": own})
            assert (await client.recv_json())["response_status"] == 201
            writer = await endpoint.connect(user)
            posts: list[dict[str, Any]] = []
            while own in hub.local_tags:  # until its queue overflowed and it let go of own
                assert len(posts) < 30_000, "the slow connection never overflowed"
                posts += await publish(writer, user, body_for(tag), 200)
            # The client is away a while longer (not a wait for anything: the scenario). The
            # server must not give up telling it why within that time.
            await asyncio.sleep(CLIENT_AWAY_SECONDS)

            frames, code = await client.read_to_end(timeout=30)
            assert code == 1013
            assert_prefix(frames, posts, "slow")
            await client.send_close(1013)
            # The server ends the connection on the reply, before its 10 s closing timeout.
            assert await client.read_to_end(timeout=5) == ([], None)
        finally:
            if client is not None:
                client.close()
            await endpoint.close_clients()


# --- the queue itself -----------------------------------------------------------------------


async def drained(outgoing: Outgoing) -> list[str] | None:
    async with asyncio.timeout(1):
        return await outgoing.drain()


async def test_overflow_calls_back_once_and_drops_frames() -> None:
    calls: list[None] = []
    outgoing = Outgoing(3, lambda: calls.append(None))
    for frame in ("e0", "e1", "e2"):
        outgoing.put_event(frame)
    assert calls == []
    outgoing.put_event("e3")  # the fourth frame: the client is not reading
    assert calls == [None]
    outgoing.put_reply("r2")
    outgoing.put_event("e4")
    outgoing.hold()
    outgoing.put_event("e5")
    outgoing.release()
    assert calls == [None]
    assert await drained(outgoing) is None  # the queued frames were dropped too


async def test_the_reply_goes_before_the_events_held_during_its_request() -> None:
    calls: list[None] = []
    outgoing = Outgoing(10, lambda: calls.append(None))
    outgoing.put_event("before")
    outgoing.hold()
    outgoing.put_event("during-1")
    outgoing.put_event("during-2")
    outgoing.put_reply("reply")
    outgoing.release()
    outgoing.put_event("after")
    assert await drained(outgoing) == ["before", "reply", "during-1", "during-2", "after"]
    assert calls == []


async def test_held_events_count_against_the_limit() -> None:
    calls: list[None] = []
    outgoing = Outgoing(3, lambda: calls.append(None))
    outgoing.put_event("queued")
    outgoing.hold()
    outgoing.put_event("held-1")
    outgoing.put_event("held-2")
    assert calls == []
    outgoing.put_event("held-3")  # 1 queued + 2 held: the limit is reached
    assert calls == [None]
    outgoing.put_reply("reply")
    outgoing.release()
    assert calls == [None]
    assert await drained(outgoing) is None


async def test_drain_wakes_for_a_frame_and_ends_when_closed() -> None:
    outgoing = Outgoing(10, lambda: None)
    waiting = asyncio.create_task(drained(outgoing))
    await asyncio.sleep(0)  # let the drain start waiting on an empty queue
    assert not waiting.done()
    outgoing.put_event("e1")
    assert await waiting == ["e1"]
    outgoing.put_reply("last")
    outgoing.close()
    assert await drained(outgoing) == ["last"]  # closed in order: what it holds still goes
    assert await drained(outgoing) is None
