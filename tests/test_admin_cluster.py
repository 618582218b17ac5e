"""Deactivating a user in the admin of one worker closes their socket and event stream on the
other: two uvicorn processes that share nothing but PostgreSQL and Redis (the control
channel)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from app.cli.cluster import Cluster
from tests.admin_support import admin_session, deactivate
from tests.cluster_support import running_cluster
from tests.support import (
    CLUSTER_SECRET,
    PASSWORD,
    TIMEOUT,
    Endpoint,
    create,
    event,
    next_event,
    run_cli,
    subscribe,
    unique,
)
from tests.test_cli import cli_env

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster(2, nginx=False, prefix=unique("lpa")) as deployment:
        yield deployment


async def test_deactivation_closes_the_socket_on_the_other_worker(
    cluster: Cluster, workers: list[Endpoint]
) -> None:
    first, second = workers
    boss = unique("boss")
    env = cli_env(
        DATABASE_URL=cluster.env["DATABASE_URL"],
        JWT_SECRET=CLUSTER_SECRET,
        REDIS_URL=cluster.env["REDIS_URL"],
        CHANNEL_PREFIX=cluster.env["CHANNEL_PREFIX"],
    )
    created = await run_cli("user", "create", boss, "--password", PASSWORD, "--admin", env=env)
    assert created.json()["is_admin"] is True
    victim, bystander = await first.user(), await second.user()
    tag = unique("adm")
    victim_socket = await second.connect(victim)
    other_socket = await second.connect(bystander)
    for socket in (victim_socket, other_socket):
        await subscribe(socket, tag, "watch")

    async with (
        second.http() as http,
        http.stream("GET", f"/hashtags/{tag}/events", params={"token": victim.token}) as stream,
    ):
        lines = stream.aiter_lines()
        assert await anext(lines) == ": subscribed"
        async with admin_session(first, boss) as client:  # the admin is on the first worker
            await deactivate(client, victim.id)
        assert await victim_socket.close_code() == 1008
        async with asyncio.timeout(TIMEOUT):
            rest = [line async for line in lines]  # the event stream ends too
        assert not any(line.startswith("event:") for line in rest)

    # The second worker refuses the token too (it reads the flag from the database).
    async with second.http() as http:
        refused = await http.post("/posts", json={"body": "x"}, headers=victim.headers)
    assert (refused.status_code, refused.json()) == (401, {"detail": "Invalid token."})
    with pytest.raises(Exception, match="403"):
        await second.connect(victim)
    # The bystander on the same worker keeps its socket and its events.
    post = await create(await first.connect(bystander), f"still here #{tag}")
    assert await next_event(other_socket) == event("create", post["pk"], post, "watch")
