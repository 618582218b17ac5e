"""Redis going away and coming back under two real worker processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from app.cli.cluster import Cluster
from tests.cluster_support import RedisServer, running_cluster
from tests.support import Endpoint, event, subscribe, unique

RECOVERY = 2.0  # delivery must resume within this many seconds of Redis coming back


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    """Two workers on the private Redis, no nginx; `workers` (conftest) gives their clients."""
    with running_cluster(2, redis_server.url, nginx=False) as deployment:
        yield deployment


async def ready_status(endpoint: Endpoint) -> int:
    async with endpoint.http() as http:
        return (await http.get("/readyz")).status_code


async def wait_ready(endpoint: Endpoint, status: int) -> None:
    """Poll /readyz (server state, not an event) until it says status."""
    async with asyncio.timeout(15):
        while await ready_status(endpoint) != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_workers_survive_a_redis_restart(
    redis_server: RedisServer, workers: list[Endpoint]
) -> None:
    w0, w1 = workers
    user = await w0.user()
    tag = unique("outage")
    subscriber = await w0.connect(user)
    await subscribe(subscriber, tag, "o")
    writer = await w1.connect(user)

    redis_server.stop()
    for endpoint in workers:
        await wait_ready(endpoint, 503)

    # Writes still commit and answer; the connections stay open and serve.
    reply = await writer.ask(
        {"action": "create", "data": {"body": f"#{tag} lost"}, "request_id": 1}
    )
    assert reply["response_status"] == 201, reply
    unpublished = reply["data"]  # its publish failed: only the change log has it
    async with w0.http() as http:
        listed = await http.get("/posts", params={"body_contains": f"#{tag} lost"})
        assert [post["pk"] for post in listed.json()] == [unpublished["pk"]]
    assert (await subscriber.ask({"action": "list", "limit": 1, "request_id": 2}))[
        "response_status"
    ] == 200
    # A subscribe that cannot be confirmed is refused, not silently half-done.
    refused = await subscriber.ask(
        {"action": "subscribe_to_hashtag", "hashtag": unique("x"), "request_id": 3}
    )
    assert refused == {
        "errors": ["Service temporarily unavailable, try again later."],
        "data": None,
        "action": "subscribe_to_hashtag",
        "response_status": 503,
        "request_id": 3,
    }

    redis_server.start()
    back = time.monotonic()
    # Delivery resumes on its own: the worker resubscribed the channel it still needs, and
    # the post written during the outage is no longer lost: it comes from the change log.
    written = {unpublished["pk"]: unpublished}
    delivered: list[int] = []
    resumed = False  # a post written after the restart arrived
    while not (resumed and unpublished["pk"] in delivered):
        if not resumed:
            reply = await writer.ask({"action": "create", "data": {"body": f"#{tag} after"}})
            written[reply["data"]["pk"]] = reply["data"]
        try:
            frame = await subscriber.recv(timeout=0.2)
        except TimeoutError:
            assert time.monotonic() - back < RECOVERY, f"delivery did not resume: {delivered}"
            continue
        # Only what was written, each post once.
        assert frame == event("create", frame["pk"], written.get(frame["pk"]), "o")
        assert frame["pk"] not in delivered, frame
        delivered.append(frame["pk"])
        resumed = resumed or frame["pk"] != unpublished["pk"]
    elapsed = time.monotonic() - back
    assert elapsed < RECOVERY
    for endpoint in workers:
        await wait_ready(endpoint, 200)
    async with httpx.AsyncClient(base_url=w0.base_url) as http:
        stats = (await http.get("/readyz")).json()["broker_stats"]
    assert stats["connected"] is True
    assert stats["disconnects"] >= 1
