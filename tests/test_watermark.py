"""The resume watermark across real processes: two uvicorn workers on PostgreSQL, each reaching
a private redis-server through a TCP proxy of its own, which the tests cut.

Offsets follow commit order, events arrive in publish order: a change whose publish comes late
(its worker cut off from Redis, or killed between commit and publish) reaches subscribers after
changes with higher offsets. A client that resumes from the watermark it was given (`safe`)
still gets it, once; one that resumed from the highest offset it saw would not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.cli.cluster import Cluster
from app.posts.hashtags import extract_hashtags
from tests.cluster_support import RedisServer, running_cluster
from tests.support import (
    TIMEOUT,
    Endpoint,
    User,
    WsClient,
    barrier,
    create,
    edit,
    next_event,
    query,
    remove,
    resume,
    subscribed,
    unique,
)
from tests.tcp_proxy import ThreadedTcpProxy

KILL_MARKER = "kill-me-after-commit"
# A change its worker could not publish stays unpublished this long, then another worker's
# relay publishes it: long enough for a test to resume in between.
GRACE = 6.0
SETTINGS = {"FAULT_KILL_BEFORE_PUBLISH": KILL_MARKER, "RELAY_GRACE_SECONDS": str(GRACE)}
PUBLISHED_WAIT = GRACE + 15.0


@pytest.fixture(scope="module")
def proxies(redis_server: RedisServer) -> Iterator[list[ThreadedTcpProxy]]:
    """One way to Redis per worker."""
    made = [ThreadedTcpProxy("127.0.0.1", redis_server.port) for _ in range(2)]
    yield made
    for proxy in made:
        proxy.close()


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer, proxies: list[ThreadedTcpProxy]) -> Iterator[Cluster]:
    worker_env = {
        index: {"REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}
        for index, proxy in enumerate(proxies)
    }
    with running_cluster(
        2, redis_server.url, nginx=False, settings=SETTINGS, worker_env=worker_env
    ) as deployment:
        yield deployment


async def reaches_redis(endpoint: Endpoint) -> bool:
    async with endpoint.http() as http:
        return (await http.get("/readyz")).json()["broker"] == "ok"


@contextlib.contextmanager
def cut(proxy: ThreadedTcpProxy) -> Iterator[None]:
    """The worker behind proxy loses Redis (its connections reset) until the block ends."""
    proxy.stop()
    try:
        yield
    finally:
        proxy.start()


async def start(client: WsClient, tag: str, request_id: Any) -> dict[str, Any]:
    """A plain subscribe; the reply's data ({"offset", "safe"})."""
    reply = await client.ask(
        {"action": "subscribe_to_hashtag", "hashtag": tag, "request_id": request_id}
    )
    assert reply == subscribed(reply, request_id)
    return dict(reply["data"])


async def offset_of(cluster: Cluster, pk: int, version: int = 1) -> int:
    rows = await query(
        cluster.settings.database_url,
        "SELECT id FROM post_changes WHERE post_id = :pk AND version = :version",
        pk=pk,
        version=version,
    )
    assert len(rows) == 1, rows
    return int(rows[0].id)


async def all_published(cluster: Cluster) -> None:
    """Wait until no logged change waits for its publish (the relays got to them)."""
    sql = "SELECT id FROM post_changes WHERE NOT published"
    async with asyncio.timeout(PUBLISHED_WAIT):
        while True:
            if not await query(cluster.settings.database_url, sql):
                return
            await asyncio.sleep(0.1)  # the relays work in rounds: nothing to wait on here


async def resumed_late_change(
    cluster: Cluster,
    a: Endpoint,
    user: User,
    tag: str,
    late: dict[str, Any],
    first: WsClient,
    start_safe: int,
    after: dict[str, Any],
) -> WsClient:
    """The client saw `after` live while `late` (a lower offset) was unpublished: it drops, then
    resumes on worker a from the highest watermark it was given, and gets late, then after."""
    late_offset = await offset_of(cluster, late["pk"])
    received = await next_event(first)
    assert (received["action"], received["pk"]) == ("create", after["pk"])
    assert received["offset"] > late_offset  # resuming from the offset would skip late
    assert received["safe"] < late_offset  # the watermark does not pass it
    await first.close()

    again = await a.connect(user)
    data = await resume(again, tag, max(start_safe, received["safe"]), "again")
    assert data["recovered"] is True
    replayed = [await next_event(again) for _ in range(2)]
    assert [(e["action"], e["pk"], e["offset"]) for e in replayed] == [
        ("create", late["pk"], late_offset),
        ("create", after["pk"], received["offset"]),
    ]
    assert replayed[0]["data"] == late
    return again


async def test_a_change_its_worker_could_not_publish_is_not_missed(
    cluster: Cluster, workers: list[Endpoint], proxies: list[ThreadedTcpProxy]
) -> None:
    a, b = workers
    user = await a.user()
    tag = unique("late")
    client = await a.connect(user)
    start_safe = (await start(client, tag, "s"))["safe"]
    writer_a, writer_b = await a.connect(user), await b.connect(user)
    with cut(proxies[1]):
        late = await create(writer_b, f"#{tag} x, committed where Redis is away")
        after = await create(writer_a, f"#{tag} y, committed after x")
        again = await resumed_late_change(cluster, a, user, tag, late, client, start_safe, after)
    # Once x is published (by a relay), the resumed subscription does not get it twice.
    await all_published(cluster)
    await barrier(a, user, again)


async def test_a_change_whose_worker_died_before_publishing_is_not_missed(
    cluster: Cluster, workers: list[Endpoint]
) -> None:
    a, b = workers
    user = await a.user()
    tag = unique("killed")
    client = await a.connect(user)
    start_safe = (await start(client, tag, "s"))["safe"]
    try:
        async with httpx.AsyncClient(base_url=b.base_url, timeout=TIMEOUT) as http:
            with pytest.raises(httpx.TransportError):  # it died before answering
                await http.post(
                    "/posts", json={"body": f"#{tag} x {KILL_MARKER}"}, headers=user.headers
                )
        rows = await query(
            cluster.settings.database_url,
            "SELECT id, author_id, body, created_at, version FROM posts WHERE body = :body",
            body=f"#{tag} x {KILL_MARKER}",
        )
        assert len(rows) == 1  # committed
        async with a.http() as http:
            late = (await http.get(f"/posts/{rows[0].id}")).json()
        after = await create(await a.connect(user), f"#{tag} y, committed after x")
        again = await resumed_late_change(cluster, a, user, tag, late, client, start_safe, after)
        await all_published(cluster)
        await barrier(a, user, again)
    finally:
        cluster.stop_worker(1, signal.SIGKILL)  # reaps the killed process
        cluster.start_worker(1)
        cluster.wait_ready(cluster.worker_urls[1], time.monotonic() + 30)


# ---- random interleavings ------------------------------------------------------------------


@dataclass
class Follower:
    """A client following some hashtags in one subscription, as docs/protocol.md says to:
    it keeps the highest `safe` seen once every hashtag is subscribed, resubscribes each with
    `since` = that after a drop, and drops events older than the post version it holds."""

    name: str
    tags: frozenset[str]
    starts: dict[str, int] = field(default_factory=dict)  # per tag, its first reply's offset
    resume_point: int | None = None
    connections: list[list[dict[str, Any]]] = field(default_factory=list)
    client: WsClient | None = None
    reader: asyncio.Task[None] | None = None
    complete: bool = False
    replies: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, endpoint: Endpoint, user: User) -> None:
        self.client = await endpoint.connect(user)
        frames: list[dict[str, Any]] = []
        self.connections.append(frames)
        self.complete = False
        self.replies = asyncio.Queue()
        self.reader = asyncio.create_task(self._read(self.client, frames))
        highest = self.resume_point
        for tag in sorted(self.tags):
            request: dict[str, Any] = {
                "action": "subscribe_to_hashtag",
                "hashtag": tag,
                "request_id": self.name,
            }
            if self.resume_point is not None:
                request["since"] = self.resume_point
            await self.client.send(request)
            async with asyncio.timeout(TIMEOUT):
                reply = await self.replies.get()
            assert reply["response_status"] == 201, reply
            data = reply["data"]
            assert data.get("recovered", True) is True, reply
            self.starts.setdefault(tag, data["offset"])
            highest = max(highest or 0, data["safe"])
        self.resume_point = highest
        self.complete = True

    async def _read(self, client: WsClient, frames: list[dict[str, Any]]) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await client.recv(timeout=3600)
                if "response_status" in frame:
                    await self.replies.put(frame)
                elif frame["request_id"] == "sync":
                    self.synced.set()
                else:
                    frames.append(frame)
                    # While hashtags are being resubscribed, the resume point stays put.
                    if self.complete:
                        self.resume_point = max(self.resume_point or 0, frame["safe"])

    async def drop(self) -> None:
        """The network goes: what was not read yet is lost to this connection."""
        assert self.client is not None and self.reader is not None
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.client.close()

    async def sync(self, endpoint: Endpoint, user: User) -> None:
        """Every event published before now has arrived (a post on a fresh tag comes last)."""
        assert self.client is not None
        tag = unique("sync")
        self.synced.clear()
        await self.client.send(
            {"action": "subscribe_to_hashtag", "hashtag": tag, "request_id": "sync"}
        )
        async with asyncio.timeout(TIMEOUT):
            assert (await self.replies.get())["response_status"] == 201
        async with endpoint.http() as http:
            response = await http.post("/posts", json={"body": f"#{tag}"}, headers=user.headers)
            assert response.status_code == 201
        async with asyncio.timeout(TIMEOUT):
            await self.synced.wait()


def check_connection(frames: list[dict[str, Any]]) -> None:
    """One connection never gets a post's version twice, nor an older version after a newer.
    A change comes twice only to correct a delete: while a subscription's hashtags are
    resubscribed one by one, a post moving between two of them leaves the first alone."""
    actions: dict[int, str] = {}
    newest: dict[int, int] = {}
    for frame in frames:
        offset, action = frame["offset"], frame["action"]
        if offset in actions:
            assert (actions[offset], action) != ("delete", "delete"), frame
            assert actions[offset] == "delete", frame
        actions[offset] = action
        if action == "delete":
            continue
        version = frame["data"]["version"]
        assert version > newest.get(frame["pk"], 0), (frame, newest)
        newest[frame["pk"]] = version


def view(follower: Follower) -> dict[int, dict[str, Any]]:
    """What the follower shows after applying every event it got, by the client rule."""
    shown: dict[int, dict[str, Any]] = {}
    for frames in follower.connections:
        for frame in frames:
            pk = frame["pk"]
            if frame["action"] == "delete":
                shown.pop(pk, None)
            elif frame["data"]["version"] > shown.get(pk, {}).get("version", 0):
                shown[pk] = frame["data"]
    return shown


async def test_random_interleavings_lose_nothing_and_repeat_nothing_per_connection(
    cluster: Cluster, workers: list[Endpoint], proxies: list[ThreadedTcpProxy]
) -> None:
    seed = int(os.environ.get("LIVEPOST_TEST_SEED") or random.randrange(2**32))
    print(f"seed {seed}")
    rng = random.Random(seed)
    a, b = workers
    user = await a.user()
    tags = [unique("r") for _ in range(3)]
    writers = [await a.connect(user), await b.connect(user)]
    followers = [Follower("f0", frozenset(tags[:2])), Follower("f1", frozenset(tags[1:]))]
    for follower in followers:
        await follower.connect(rng.choice(workers), user)
    live: dict[int, str] = {}  # pk -> body of posts not deleted
    b_cut = False
    try:
        for _step in range(60):
            roll = rng.random()
            if roll < 0.55 or not live:
                worker = rng.randrange(2)
                body = " ".join(f"#{t}" for t in rng.sample(tags, rng.randrange(3))) + f" {_step}"
                if live and rng.random() < 0.5:
                    pk = rng.choice(sorted(live))
                    await edit(writers[worker], pk, body)
                    live[pk] = body
                else:
                    live[(await create(writers[worker], body))["pk"]] = body
            elif roll < 0.65:
                pk = rng.choice(sorted(live))
                await remove(writers[rng.randrange(2)], pk)
                del live[pk]
            elif roll < 0.8:
                b_cut = not b_cut
                (proxies[1].stop if b_cut else proxies[1].start)()
            else:
                follower = rng.choice(followers)
                await follower.drop()
                # Only a worker that reaches Redis accepts a subscription (a real client
                # would retry a 503 after a moment).
                usable = [a] if b_cut or not await reaches_redis(b) else workers
                await follower.connect(rng.choice(usable), user)
            await asyncio.sleep(rng.random() * 0.05)
    finally:
        if b_cut:
            proxies[1].start()
    await all_published(cluster)
    for follower in followers:
        await follower.sync(a, user)
        await follower.drop()

    changes = await query(
        cluster.settings.database_url,
        "SELECT id, post_id, version, old_body, new_body FROM post_changes ORDER BY id",
    )
    posts = {
        row.id: row
        for row in await query(cluster.settings.database_url, "SELECT id, body, version FROM posts")
    }
    for follower in followers:
        for frames in follower.connections:
            check_connection(frames)
        # Every change it got is one it follows, after it began following that hashtag.
        expected: dict[int, Any] = {}
        for change in changes:
            touched = _tags(change.old_body) | _tags(change.new_body)
            if any(change.id > follower.starts[t] for t in touched & follower.tags):
                expected[change.id] = change
        got = {frame["offset"] for frames in follower.connections for frame in frames}
        assert got <= set(expected), sorted(got - set(expected))
        # And what it shows is the truth for every post it was told about or should have been.
        shown = view(follower)
        for pk in {change.post_id for change in expected.values()}:
            post = posts.get(pk)
            if post is not None and _tags(post.body) & follower.tags:
                assert shown.get(pk, {}).get("version") == post.version, story(follower, pk)
                assert shown[pk]["body"] == post.body
            else:
                assert pk not in shown, story(follower, pk)


def story(follower: Follower, pk: int) -> str:
    """What a follower got of one post, connection by connection (for a failure's message)."""
    lines = [f"{follower.name} post {pk}, hashtags started at {follower.starts}"]
    for number, frames in enumerate(follower.connections):
        got = [
            (f["action"], f["offset"], f["safe"], f["data"].get("version"))
            for f in frames
            if f["pk"] == pk
        ]
        lines.append(f"  connection {number}: {got}")
    return "\n".join(lines)


def _tags(body: str | None) -> frozenset[str]:
    return extract_hashtags(body) if body is not None else frozenset()
