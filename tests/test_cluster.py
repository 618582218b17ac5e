"""Cross-process fan-out: two real uvicorn workers sharing PostgreSQL and Redis, behind nginx."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.cli.cluster import Cluster
from app.pubsub.channels import channel_for
from tests.cluster_support import running_cluster
from tests.support import Endpoint, WsClient, barrier, event, run_cli, subscribe, unique

WORKERS = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two workers on the shared Redis, behind nginx; `workers` (conftest) gives their clients."""
    # The watermark is published once at start only: the tests that count PUBLISH calls
    # count the writes' own.
    quiet = {"WATERMARK_INTERVAL_SECONDS": "3600"}
    with running_cluster(WORKERS, nginx=True, prefix=unique("lpc"), settings=quiet) as deployment:
        yield deployment


@pytest.fixture
async def balancer(cluster: Cluster) -> AsyncIterator[Endpoint]:
    endpoint = Endpoint(cluster.lb_url)
    yield endpoint
    await endpoint.close_clients()


@pytest.fixture
async def redis(cluster: Cluster) -> AsyncIterator[Redis]:
    client = Redis.from_url(cluster.env["REDIS_URL"])
    yield client
    await client.aclose()


def prefix(cluster: Cluster) -> str:
    return cluster.env["CHANNEL_PREFIX"]


async def ask_ok(client: WsClient, message: dict[str, Any]) -> dict[str, Any]:
    reply = await client.ask(message)
    assert reply["errors"] == [], reply
    return dict(reply["data"])


async def publish_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


async def test_every_diff_rule_across_workers(workers: list[Endpoint]) -> None:
    """Writes on worker 1 reach subscriptions on both workers with the right action."""
    w0, w1 = workers
    reader, writer = await w0.user(), await w1.user()
    a, b = unique("a"), unique("b")
    near = await w1.connect(reader)
    far = await w0.connect(reader)
    await subscribe(near, a, 1)
    await subscribe(far, a, 2)
    out = await w1.connect(writer)

    async def expect(action: str, pk: int, data: dict[str, Any]) -> None:
        for client, request_id in ((near, 1), (far, 2)):
            assert await client.recv() == event(action, pk, data, request_id)

    post = await ask_ok(out, {"action": "create", "data": {"body": f"#{a} hello"}})
    pk = post["pk"]
    await expect("create", pk, post)
    post = await ask_ok(out, {"action": "patch", "pk": pk, "data": {"body": f"#{a} edited"}})
    await expect("update", pk, post)
    await ask_ok(out, {"action": "patch", "pk": pk, "data": {"body": f"#{b} moved"}})
    await expect("delete", pk, {"pk": pk})
    post = await ask_ok(out, {"action": "update", "pk": pk, "data": {"body": f"#{a} #{b} back"}})
    await expect("create", pk, post)
    reply = await out.ask({"action": "delete", "pk": pk, "request_id": 9})
    assert reply == {"errors": [], "data": None, "action": "delete", "response_status": 204,
                     "request_id": 9}  # fmt: skip
    await expect("delete", pk, {"pk": pk})
    await barrier(w0, writer, near, far)


async def test_rest_and_cli_writes_reach_every_worker(
    cluster: Cluster, workers: list[Endpoint]
) -> None:
    w0, w1 = workers
    user = await w0.user()
    tag = unique("t")
    subscribers = [await w.connect(user) for w in workers]
    for subscriber in subscribers:
        await subscribe(subscriber, tag, "s")

    async with w1.http() as http:
        created = await http.post("/posts", json={"body": f"rest #{tag}"}, headers=user.headers)
    assert created.status_code == 201
    for subscriber in subscribers:
        assert await subscriber.recv() == event("create", created.json()["pk"], created.json(), "s")

    env = {**os.environ, **{k: v for k, v in cluster.env.items() if k.isupper()}}
    async with asyncio.timeout(30):
        result = await run_cli(
            "post", "create", "--user", user.username, "--body", f"cli #{tag}", env=env
        )
    assert result.returncode == 0, result.stderr
    post = json.loads(result.stdout)
    for subscriber in subscribers:
        assert await subscriber.recv() == event("create", post["pk"], post, "s")


async def test_overlapping_tags_give_one_event_across_channels(workers: list[Endpoint]) -> None:
    """The change arrives on two channels; the subscription holding both sees it once."""
    w0, w1 = workers
    user = await w0.user()
    a, b = unique("a"), unique("b")
    listener = await w1.connect(user)
    await subscribe(listener, a, 7)
    await subscribe(listener, b, 7)
    other = await w1.connect(user)
    await subscribe(other, b, 8)
    writer = await w0.connect(user)
    post = await ask_ok(writer, {"action": "create", "data": {"body": f"#{a} #{b}"}})
    assert await listener.recv() == event("create", post["pk"], post, 7)
    assert await other.recv() == event("create", post["pk"], post, 8)
    await barrier(w0, user, listener, other)


async def test_a_write_after_the_subscribe_reply_always_arrives(workers: list[Endpoint]) -> None:
    """The 201 is sent only once Redis confirmed the channel, so no write can slip past."""
    w0, w1 = workers
    user = await w0.user()
    subscriber = await w0.connect(user)
    writer = await w1.connect(user)
    for _ in range(20):
        tag = unique("race")
        offset = await subscribe(subscriber, tag, tag)
        post = await ask_ok(writer, {"action": "create", "data": {"body": f"#{tag}"}})
        received = await subscriber.recv()
        assert received == event("create", post["pk"], post, tag)
        assert received["offset"] > offset  # committed after the reply: later in the log


async def test_versions_never_go_backwards_with_two_writers(workers: list[Endpoint]) -> None:
    user = await workers[0].user()
    tag = unique("v")
    watchers = [await w.connect(user) for w in workers]
    for watcher in watchers:
        await subscribe(watcher, tag, "v")
    first = await workers[0].connect(user)
    post = await ask_ok(first, {"action": "create", "data": {"body": f"#{tag} 0"}})
    writers = [first, await workers[1].connect(user)]

    async def edit(client: WsClient, label: str) -> None:
        for n in range(25):
            await ask_ok(client, {"action": "patch", "pk": post["pk"],
                                  "data": {"body": f"#{tag} {label}{n}"}})  # fmt: skip

    await asyncio.gather(edit(writers[0], "x"), edit(writers[1], "y"))
    final = 51  # one create and fifty edits
    for watcher in watchers:
        versions = []
        while not versions or versions[-1] != final:
            frame = await watcher.recv()
            versions.append(frame["data"]["version"])
        assert versions == sorted(set(versions)), versions
        assert versions[0] == 1


async def test_reference_counting_in_redis(
    cluster: Cluster, workers: list[Endpoint], redis: Redis
) -> None:
    w0, w1 = workers
    user = await w0.user()
    tag = unique("rc")
    channel = channel_for(prefix(cluster), tag).encode()
    clients = [await w0.connect(user), await w0.connect(user), await w1.connect(user)]
    for index, client in enumerate(clients):
        await subscribe(client, tag, index)
    # One subscription per worker, not per client: Redis counts two subscribers.
    assert dict(await redis.pubsub_numsub(channel)) == {channel: WORKERS}

    await ask_ok(
        clients[0], {"action": "unsubscribe_from_hashtag", "hashtag": tag, "request_id": 0}
    )
    assert dict(await redis.pubsub_numsub(channel)) == {channel: WORKERS}
    await clients[2].close()  # vanishes without unsubscribing
    await wait_for_numsub(redis, channel, 1)
    await clients[1].close()
    await wait_for_numsub(redis, channel, 0)
    # No hashtag channel is left; the standing ones (the watermark's) stay.
    assert await redis.pubsub_channels(f"{prefix(cluster)}:tag:*") == []


async def wait_for_numsub(redis: Redis, channel: bytes, expected: int) -> None:
    """Poll Redis itself (server state, not an event) until the count matches."""
    async with asyncio.timeout(10):
        while dict(await redis.pubsub_numsub(channel))[channel] != expected:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("subscribers", [1, 200])
async def test_publishes_per_write_do_not_depend_on_subscribers(
    subscribers: int, workers: list[Endpoint], redis: Redis
) -> None:
    user = await workers[0].user()
    x, y, z, w = (unique(name) for name in "xyzw")
    clients = []
    for index in range(subscribers):
        client = await workers[index % WORKERS].connect(user)
        await subscribe(client, x, "n")
        clients.append(client)
    writer = await workers[0].connect(user)

    before = await publish_calls(redis)
    post = await ask_ok(writer, {"action": "create", "data": {"body": f"#{x} #{y} #{z}"}})
    for client in clients:
        assert (await client.recv())["pk"] == post["pk"]
    assert await publish_calls(redis) - before == 3  # one per tag: x, y, z

    before = await publish_calls(redis)
    await ask_ok(writer, {"action": "patch", "pk": post["pk"], "data": {"body": f"#{x} #{w}"}})
    for client in clients:
        assert (await client.recv())["action"] == "update"
    assert await publish_calls(redis) - before == 4  # the union of old and new: x, y, z, w


async def test_clients_behind_nginx_on_different_workers_see_each_other(
    cluster: Cluster, balancer: Endpoint
) -> None:
    user = await balancer.user()
    tag = unique("lb")
    clients = [await balancer.connect(user) for _ in range(4)]
    workers = {c.connection.response.headers["x-livepost-worker"] for c in clients}
    assert workers == {str(cluster.pid(i)) for i in range(WORKERS)}
    by_worker: dict[str, WsClient] = {}
    for client in clients:
        by_worker.setdefault(client.connection.response.headers["x-livepost-worker"], client)
    first, second = by_worker.values()
    await subscribe(first, tag, "lb")
    post = await ask_ok(second, {"action": "create", "data": {"body": f"via nginx #{tag}"}})
    assert await first.recv() == event("create", post["pk"], post, "lb")
