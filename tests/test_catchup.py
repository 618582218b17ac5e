"""A worker whose broker connection was lost catches up from the change log once its
subscriptions are confirmed again, without giving a subscription anything from before it."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from app.pubsub.redis import RedisBroker
from tests.cluster_support import RedisServer
from tests.support import Stack, barrier, create, event, next_event, subscribe, unique
from tests.test_changelog import database_client, log_rows


async def test_redis_broker_resyncs_once_resubscribed(redis_server: RedisServer) -> None:
    """on_resync runs after a lost connection, when the channels are confirmed again: a
    message published from inside the hook already arrives."""
    received: list[bytes] = []
    broker = RedisBroker(redis_server.url)
    publisher = Redis.from_url(redis_server.url)
    published = asyncio.get_running_loop().create_future()

    def on_resync() -> None:
        task = asyncio.ensure_future(publisher.publish("lp:tag:resync", b"after"))
        task.add_done_callback(lambda _t: published.set_result(None))

    broker.on_resync = on_resync
    await broker.start(lambda _channel, data: received.append(data))
    try:
        async with asyncio.timeout(10):
            while not (await broker.ping()) or not broker.stats["connected"]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await broker.subscribe("lp:tag:resync")
        redis_server.stop()
        redis_server.start()
        async with asyncio.timeout(10):
            await published
            while not received:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert received == [b"after"]
    finally:
        await broker.close()
        await publisher.aclose()


def _lost_write_sql(live: Stack, tag: str, pk: int, body: str) -> str:
    """A committed change whose publish never happened: what the service does in its
    transaction (app/changelog/record.py), then nothing."""
    update = f"UPDATE posts SET body = '{body}' WHERE id = {pk};"
    if live.name.startswith("sqlite"):
        return (
            f"{update} INSERT INTO change_tags (change_id, tag) "
            f"SELECT max(id), '{tag}' FROM post_changes;"
        )
    # One implicit transaction: the announcement holds for the UPDATE.
    return f"SELECT set_config('livepost.tags', 'tags:{tag}', true); {update}"


async def test_catch_up_delivers_what_the_hub_missed(live: Stack) -> None:
    user = await live.user()
    tag = unique("catch")
    writer = await live.connect(user)
    before = await create(writer, f"#{tag} before anyone listened")
    subscriber = await live.connect(user)
    await subscribe(subscriber, tag, "s")
    post = await create(writer, f"#{tag} original")
    await next_event(subscriber)

    await database_client(live, _lost_write_sql(live, tag, post["pk"], f"#{tag} lost"))
    await live.server.runtime.catchup.run()  # what on_resync schedules
    caught = await next_event(subscriber)
    assert caught == event(
        "update", post["pk"], {**post, "body": f"#{tag} lost", "version": 2}, "s",
        caught["offset"],
    )  # fmt: skip
    # The relay publishes the same change once its grace is over; hubs drop that copy.
    async with asyncio.timeout(15):
        while not all(row.published for row in await log_rows(live, post["pk"])):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    # Nothing from before the subscription, nothing twice.
    assert before["pk"] != post["pk"]
    await barrier(live, user, subscriber)
