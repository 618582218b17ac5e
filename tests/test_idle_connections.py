"""Idle and half-open connections: found by ping/pong timeouts, then cleaned up everywhere.

A half-open client is a bare socket that completes the handshake, subscribes, reads its reply
and then goes silent: it never answers a ping, as when the peer vanished without a FIN. The
server (uvicorn's keepalive, here every 0.3 s with a 0.3 s timeout) must drop it and release
its subscription in the hub and, on a Redis-backed server, in Redis. A client that answers
pings but sends nothing stays connected.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.migrations import upgrade_to_head
from app.pubsub.channels import channel_for
from tests.raw_websocket import RawWebSocket
from tests.support import Server, Stack, subscribe, subscribed, unique

REDIS_URL = os.environ.get("LIVEPOST_TEST_REDIS_URL")
REQUIRE = os.environ.get("LIVEPOST_REQUIRE_SERVICES") == "1"
SECRET = "idle-test-secret-" + "w" * 32
PING_INTERVAL = 0.3
PING_TIMEOUT = 0.3
# Dropped within interval + timeout; the rest is slack for a loaded machine.
DETECTION_LIMIT = 5.0


@pytest.fixture(params=["memory", "redis"])
async def pinging(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """A server with fast keepalive pings, on the in-process broker or on Redis."""
    redis_url = None
    if request.param == "redis":
        if not REDIS_URL:
            if REQUIRE:
                pytest.fail("Redis is required but LIVEPOST_TEST_REDIS_URL is unset")
            pytest.skip("set LIVEPOST_TEST_REDIS_URL to run the Redis case")
        redis_url = REDIS_URL
    url = f"sqlite+aiosqlite:///{tmp_path / 'livepost.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    settings = Settings(
        database_url=url,
        redis_url=redis_url,
        jwt_secret=SECRET,
        channel_prefix=unique("lpi"),
        log_level="warning",
    )
    server = Server(settings, ws_ping_interval=PING_INTERVAL, ws_ping_timeout=PING_TIMEOUT)
    await server.start()
    deployed = Stack(request.param, settings, server)
    try:
        yield deployed
    finally:
        await deployed.close_clients()
        await server.stop()


async def channel_subscribers(stack: Stack, tag: str) -> int | None:
    """Redis's count of subscribers to tag's channel; None on the in-process broker."""
    if stack.settings.redis_url is None:
        return None
    redis = Redis.from_url(stack.settings.redis_url)
    try:
        async with asyncio.timeout(5):
            [(_, count)] = await redis.pubsub_numsub(
                channel_for(stack.settings.channel_prefix, tag)
            )
    finally:
        await redis.aclose()
    return int(count)


async def test_a_half_open_connection_is_dropped_and_its_subscription_released(
    pinging: Stack,
) -> None:
    stack = pinging
    hub = stack.server.runtime.hub
    user = await stack.user()
    tag, kept = unique("half"), unique("kept")

    # A well-behaved client that only answers pings (websockets does so by itself).
    idle = await stack.connect(user)
    await subscribe(idle, kept, "idle")

    silent = await RawWebSocket.connect(stack.server.port, f"?token={user.token}")
    try:
        await silent.send_json(
            {"action": "subscribe_to_hashtag", "hashtag": tag, "request_id": "silent"}
        )
        reply = await silent.recv_json()
        assert reply == subscribed(reply, "silent")
        assert {tag, kept} <= hub.local_tags
        assert await channel_subscribers(stack, tag) in (None, 1)
        silent_since = time.monotonic()

        # From here on the client sends nothing: no pong. Poll the server's state (not an
        # event we could await) until the hub has let go of the tag.
        async with asyncio.timeout(DETECTION_LIMIT):
            while tag in hub.local_tags:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        detected = time.monotonic() - silent_since
        # ...and the worker's broker subscription went with it (released in the background).
        async with asyncio.timeout(DETECTION_LIMIT):
            while await channel_subscribers(stack, tag) not in (None, 0):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        print(f"\n[idle/{stack.name}] half-open connection dropped after {detected:.2f}s")
        assert detected >= PING_INTERVAL  # by the keepalive, not by anything the client did

        # The server closed the socket itself: what is left to read is pings, then a close
        # frame (1011, keepalive ping timeout) or the end of the stream.
        async with asyncio.timeout(DETECTION_LIMIT):
            frames, code = await silent.read_to_end()
        assert frames == []
        assert code in (1011, None), code
    finally:
        silent.close()

    # The idle client that answers pings has outlived several ping intervals and still works.
    assert kept in hub.local_tags
    assert await channel_subscribers(stack, kept) in (None, 1)
    reply = await idle.ask(
        {"action": "unsubscribe_from_hashtag", "hashtag": kept, "request_id": "idle"}
    )
    assert reply == {
        "errors": [],
        "data": {},
        "action": "unsubscribe_from_hashtag",
        "response_status": 204,
        "request_id": "idle",
    }
    assert kept not in hub.local_tags


async def test_a_connection_that_goes_away_without_a_close_frame_is_released(
    pinging: Stack,
) -> None:
    """A peer that closes its socket (FIN, no close frame) is released at once, without
    waiting for a ping to go unanswered."""
    stack = pinging
    hub = stack.server.runtime.hub
    user = await stack.user()
    tag = unique("gone")
    client = await RawWebSocket.connect(stack.server.port, f"?token={user.token}")
    try:
        await client.send_json({"action": "subscribe_to_hashtag", "hashtag": tag})
        assert (await client.recv_json())["response_status"] == 201
        assert tag in hub.local_tags
    finally:
        client.close()
    async with asyncio.timeout(DETECTION_LIMIT):
        while tag in hub.local_tags or await channel_subscribers(stack, tag) not in (None, 0):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
