"""Delivery guarantees across real processes: two uvicorn workers behind nginx, PostgreSQL,
and a private redis-server the tests stop and restart.

- a worker SIGKILLed between commit and publish: the relay of the other one publishes;
- Redis down during writes: every committed change arrives once it is back;
- resume (WebSocket `since`, SSE `Last-Event-ID`) through a different worker than the one
  the client first used, with and without the backlog still retained;
- subscribe, then a write on the other worker right after the reply, many times over.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from app.cli.cluster import Cluster
from tests.cluster_support import RedisServer, running_cluster
from tests.support import Endpoint, barrier, create, event, resume, subscribe, unique
from tests.test_sse import rest_create, stream

KILL_MARKER = "kill-me-after-commit"
PER_TAG = 3  # changes kept per hashtag, so "not retained" is quick to reach
SETTINGS = {
    "FAULT_KILL_BEFORE_PUBLISH": KILL_MARKER,
    "CHANGELOG_MAX_PER_HASHTAG": str(PER_TAG),
    "CHANGELOG_PRUNE_INTERVAL_SECONDS": "0.2",
}
# Longest wait for a change the fast path lost: the relay's grace (2 s) plus its round.
RELAY_WAIT = 15.0


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    with running_cluster(2, redis_server.url, nginx=True, settings=SETTINGS) as deployment:
        yield deployment


async def test_subscribe_then_write_on_the_other_worker_always_arrives(
    workers: list[Endpoint],
) -> None:
    w0, w1 = workers
    user = await w0.user()
    subscriber = await w0.connect(user)
    writer = await w1.connect(user)
    for round_ in range(50):
        tag = unique("race")
        await subscribe(subscriber, tag, round_)
        post = await create(writer, f"#{tag} right after the reply")
        received = await subscriber.recv()
        assert received == event("create", post["pk"], post, round_, received["offset"])


async def test_resume_through_another_worker(cluster: Cluster, workers: list[Endpoint]) -> None:
    w0, w1 = workers
    user = await w0.user()
    tag = unique("away")
    first = await w0.connect(user)
    await subscribe(first, tag, "a")
    writer = await w1.connect(user)
    await create(writer, f"#{tag} seen")
    seen = await first.recv()
    await first.close()

    missed = [await create(writer, f"#{tag} missed {i}") for i in range(PER_TAG - 1)]
    again = await w1.connect(user)
    data = await resume(again, tag, seen["offset"], "b")
    assert data["recovered"] is True
    for post in missed:
        replayed = await again.recv()
        assert replayed == event("create", post["pk"], post, "b", replayed["offset"])
    await barrier(w0, user, again)

    # Through nginx, as an SSE client: the same backlog by Last-Event-ID.
    balancer = Endpoint(cluster.lb_url)
    headers = {**user.headers, "Last-Event-ID": str(seen["offset"])}
    async with stream(balancer, tag, headers=headers) as reader:
        assert reader.response.headers["x-livepost-recovered"] == "true"
        assert [(await reader.event())["data"]["pk"] for _ in missed] == [p["pk"] for p in missed]
        live = await rest_create(w0, user, f"#{tag} live over sse")
        assert (await reader.event())["data"]["pk"] == live["pk"]


async def test_resume_past_the_retained_backlog_is_not_recovered(workers: list[Endpoint]) -> None:
    w0, w1 = workers
    user = await w0.user()
    tag = unique("gone")
    first = await w0.connect(user)
    start = await subscribe(first, tag, "a")
    await first.close()
    writer = await w1.connect(user)
    for i in range(PER_TAG + 2):
        await create(writer, f"#{tag} {i}")
    # The relays prune every 0.2 s; until one has, the backlog is still complete.
    async with asyncio.timeout(10):
        while True:
            again = await w1.connect(user)
            if not (await resume(again, tag, start, "b"))["recovered"]:
                break
            await again.close()
            await asyncio.sleep(0.1)
    # Not recovered (reload with list), but subscribed: live events flow.
    post = await create(writer, f"#{tag} after")
    received = await again.recv()
    assert received == event("create", post["pk"], post, "b", received["offset"])


async def test_redis_down_during_writes_then_everything_arrives(
    redis_server: RedisServer, workers: list[Endpoint]
) -> None:
    w0, w1 = workers
    user = await w0.user()
    tag = unique("outage")
    subscriber = await w0.connect(user)
    await subscribe(subscriber, tag, "s")
    redis_server.stop()
    # Writes keep committing (their publish fails); both workers notice Redis is gone.
    written = [await rest_create(w1, user, f"#{tag} during {i}") for i in range(10)]
    # Longer than the relays' grace: they retry during the outage and, once Redis is back,
    # race the subscriber's worker resubscribing (which then catches up from the log).
    await asyncio.sleep(3)
    redis_server.start()
    received = [await subscriber.recv(timeout=RELAY_WAIT) for _ in written]
    assert [(e["action"], e["pk"]) for e in received] == [("create", p["pk"]) for p in written]
    assert [e["offset"] for e in received] == sorted(e["offset"] for e in received)
    # Exactly once: nothing else was queued behind them.
    await barrier(w1, user, subscriber)


async def test_worker_killed_between_commit_and_publish(
    cluster: Cluster, workers: list[Endpoint]
) -> None:
    w0, w1 = workers
    user = await w0.user()
    tag = unique("kill")
    subscriber = await w1.connect(user)
    await subscribe(subscriber, tag, "s")
    async with httpx.AsyncClient(base_url=w0.base_url, timeout=10) as http:
        with pytest.raises(httpx.TransportError):  # it died before answering
            await http.post("/posts", json={"body": f"#{tag} {KILL_MARKER}"}, headers=user.headers)
    try:
        # The commit happened: the other worker's relay publishes the change.
        started = time.monotonic()
        received = await subscriber.recv(timeout=RELAY_WAIT)
        assert received["action"] == "create"
        assert received["data"]["body"] == f"#{tag} {KILL_MARKER}"
        print(f"relayed {time.monotonic() - started:.2f} s after the kill")
        async with w1.http() as http:
            stored = await http.get(f"/posts/{received['pk']}")
            assert stored.json() == received["data"]
        await barrier(w1, user, subscriber)
    finally:
        cluster.stop_worker(0, signal.SIGKILL)  # reaps the killed process
        cluster.start_worker(0)
        cluster.wait_ready(cluster.worker_urls[0], time.monotonic() + 30)
