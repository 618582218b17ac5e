"""The broker contract, the same scenarios on every backend (in-process and Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.pubsub.broker import Broker
from app.pubsub.memory import MemoryBroker
from app.pubsub.redis import RedisBroker
from tests.cluster_support import require_services
from tests.support import unique


class Inbox:
    """Collects (channel, data) from a broker; lets a test await the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def __call__(self, channel: str, data: bytes) -> None:
        self.queue.put_nowait((channel, data))

    async def next(self) -> tuple[str, bytes]:
        async with asyncio.timeout(5):
            return await self.queue.get()


def make(kind: str, heartbeat: float = 5.0) -> Broker:
    if kind == "memory":
        return MemoryBroker()
    _, redis_url = require_services()
    return RedisBroker(redis_url, heartbeat=heartbeat)


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Inbox]]:
    inbox = Inbox()
    instance = make(request.param)
    await instance.start(inbox)
    await wait_connected(instance)
    yield instance, inbox
    await instance.close()


async def wait_connected(broker: Broker) -> None:
    async with asyncio.timeout(5):
        while not await broker.ping():  # noqa: ASYNC110  (connection state, not an event)
            await asyncio.sleep(0.01)


async def test_subscribed_channel_receives_bytes(broker: tuple[Broker, Inbox]) -> None:
    instance, inbox = broker
    channel = unique("ch")
    await instance.subscribe(channel)
    await instance.publish(channel, b"\x00binary\xffpayload")
    assert await inbox.next() == (channel, b"\x00binary\xffpayload")


async def test_unsubscribed_channel_receives_nothing(broker: tuple[Broker, Inbox]) -> None:
    instance, inbox = broker
    quiet, loud = unique("quiet"), unique("loud")
    await instance.subscribe(quiet)
    await instance.unsubscribe(quiet)
    await instance.subscribe(loud)
    await instance.publish(quiet, b"dropped")
    await instance.publish(loud, b"kept")
    # Publishes on one client arrive in order, so "kept" proves "dropped" never came.
    assert await inbox.next() == (loud, b"kept")


async def test_messages_arrive_in_publish_order(broker: tuple[Broker, Inbox]) -> None:
    instance, inbox = broker
    channel = unique("order")
    await instance.subscribe(channel)
    for n in range(100):
        await instance.publish(channel, str(n).encode())
    assert [(await inbox.next())[1] for _ in range(100)] == [str(n).encode() for n in range(100)]


async def test_redis_listener_outlives_long_silence() -> None:
    """Idle far longer than several heartbeats (redis-py's 5 s socket timeout killed the
    seed's listener here); the connection is kept and delivery still works."""
    inbox = Inbox()
    broker = make("redis", heartbeat=0.1)
    assert isinstance(broker, RedisBroker)
    await broker.start(inbox)
    try:
        await wait_connected(broker)
        channel = unique("idle")
        await broker.subscribe(channel)
        await asyncio.sleep(1.0)  # the silence under test, not a wait for an event
        await broker.publish(channel, b"still here")
        assert await inbox.next() == (channel, b"still here")
        assert broker.stats["disconnects"] == 0
    finally:
        await broker.close()


async def test_redis_channels_are_released_on_close() -> None:
    _, redis_url = require_services()
    broker = make("redis")
    await broker.start(Inbox())
    channel = unique("rel")
    admin = Redis.from_url(redis_url)
    try:
        await wait_connected(broker)
        await broker.subscribe(channel)
        assert await admin.pubsub_channels(channel) == [channel.encode()]
        await broker.close()
        async with asyncio.timeout(5):
            while await admin.pubsub_channels(channel):  # noqa: ASYNC110  (Redis state)
                await asyncio.sleep(0.01)
    finally:
        await admin.aclose()
