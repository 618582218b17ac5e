"""PostgreSQL going away and coming back under a running server.

The server reaches PostgreSQL through a TCP proxy that the test stops (listener closed, every
proxied connection aborted, so new connections are refused) and starts again. While it is
down every request that needs the database is answered 503, fast, over WebSocket and REST;
the process and its WebSocket connections stay up; once it is back the same connection
works again, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.migrations import upgrade_to_head
from tests.support import TIMEOUT, Server, Stack, WsClient, event, subscribe, unique
from tests.tcp_proxy import TcpProxy

PG_URL = os.environ.get("LIVEPOST_TEST_DATABASE_URL")
REQUIRE = os.environ.get("LIVEPOST_REQUIRE_SERVICES") == "1"
SECRET = "outage-test-secret-" + "v" * 32
UNAVAILABLE_WS = "Service temporarily unavailable, try again later."
UNAVAILABLE_REST = {"detail": "Service temporarily unavailable."}
# A request during the outage must fail at least this fast (the engine's connect timeout is
# 5 s; a refused connection should not even take that).
FAIL_FAST = 8.0
RECOVERY = 30.0


async def admin(url: URL, statement: str) -> None:
    """CREATE/DROP DATABASE on the server's `postgres` database."""
    engine = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with asyncio.timeout(30), engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture
async def outage() -> AsyncIterator[tuple[Stack, TcpProxy]]:
    """A server whose PostgreSQL (a database of its own) sits behind a proxy."""
    if not PG_URL:
        if REQUIRE:
            pytest.fail("PostgreSQL is required but LIVEPOST_TEST_DATABASE_URL is unset")
        pytest.skip("set LIVEPOST_TEST_DATABASE_URL to run the database outage test")
    direct = make_url(Settings(database_url=PG_URL).database_url)
    name = unique("lp_outage_")
    await admin(direct, f'CREATE DATABASE "{name}"')
    try:
        direct = direct.set(database=name)
        await asyncio.to_thread(upgrade_to_head, direct.render_as_string(hide_password=False))
        proxy = TcpProxy(direct.host or "127.0.0.1", direct.port or 5432)
        await proxy.start()
        proxied = direct.set(host="127.0.0.1", port=proxy.port)
        settings = Settings(
            database_url=proxied.render_as_string(hide_password=False),
            jwt_secret=SECRET,
            channel_prefix=unique("lpd"),
            log_level="warning",
        )
        server = Server(settings)
        await server.start()
        stack = Stack("postgres+proxy", settings, server)
        try:
            yield stack, proxy
        finally:
            if proxy.running:  # first: calls stuck on a frozen database then fail at once
                await proxy.stop()
            await stack.close_clients()
            await server.stop()
    finally:
        await admin(direct, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def ask(client: WsClient, message: dict[str, Any]) -> tuple[Any, float]:
    """The reply and how long it took."""
    return await ask_within(client, message, TIMEOUT)


async def ask_within(
    client: WsClient,
    message: dict[str, Any],
    limit: float,
) -> tuple[Any, float]:
    """The reply, which must come within limit seconds, and how long it took."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        await client.send(message)
    reply = await client.recv(timeout=limit)
    return reply, time.monotonic() - started


async def wait_ready(stack: Stack) -> None:
    """Poll readiness (the server's state, not an event we could await) until it is back by
    itself: no restart."""
    async with asyncio.timeout(RECOVERY):
        while (await get(stack, "/readyz"))[0].status_code != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def get(stack: Stack, path: str) -> tuple[httpx.Response, float]:
    """The response and how long it took."""
    return await request(stack, "GET", path)


async def request(
    stack: Stack, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    async with asyncio.timeout(2 * TIMEOUT), stack.http() as http:
        response = await http.request(method, path, **kwargs)
    return response, time.monotonic() - started


def unavailable(action: str, request_id: str) -> dict[str, Any]:
    return {
        "errors": [UNAVAILABLE_WS],
        "data": None,
        "action": action,
        "response_status": 503,
        "request_id": request_id,
    }


async def test_requests_get_503_while_postgres_is_down_and_work_again_after(
    outage: tuple[Stack, TcpProxy],
) -> None:
    stack, proxy = outage
    user = await stack.user()
    tag = unique("db")
    client = await stack.connect(user)
    await subscribe(client, tag, "sub")
    body = f"before the outage #{tag}"
    created, _ = await ask(client, {"action": "create", "data": {"body": body}, "request_id": "c0"})
    assert created["response_status"] == 201, created
    first = created["data"]
    assert await client.recv() == event("create", first["pk"], first, "sub")

    await proxy.stop()

    # WebSocket: every action that needs the database answers 503, on the same connection.
    timings: dict[str, float] = {}
    reply, timings["ws create"] = await ask(
        client, {"action": "create", "data": {"body": f"during #{tag}"}, "request_id": "c1"}
    )
    assert reply == unavailable("create", "c1")
    reply, timings["ws list"] = await ask(client, {"action": "list", "request_id": "l1"})
    assert reply == unavailable("list", "l1")
    reply, timings["ws retrieve"] = await ask(
        client, {"action": "retrieve", "pk": first["pk"], "request_id": "r1"}
    )
    assert reply == unavailable("retrieve", "r1")
    reply, timings["ws authenticate"] = await ask(
        client, {"action": "authenticate", "token": user.token, "request_id": "a1"}
    )
    assert reply == unavailable("authenticate", "a1")
    # A subscribe reads the change log's current offset (its reply carries it): 503 too, and
    # it leaves no half-made subscription behind.
    refused_tag = unique("x")
    reply, timings["ws subscribe"] = await ask(
        client, {"action": "subscribe_to_hashtag", "hashtag": refused_tag, "request_id": "s1"}
    )
    assert reply == unavailable("subscribe_to_hashtag", "s1")
    assert refused_tag not in stack.server.runtime.hub.local_tags

    # REST: 503 with its own text; the probes tell load balancers.
    response, timings["rest list"] = await get(stack, "/posts")
    assert (response.status_code, response.json()) == (503, UNAVAILABLE_REST)
    response, timings["rest create"] = await request(
        stack, "POST", "/posts", json={"body": f"rest #{tag}"}, headers=user.headers
    )
    assert (response.status_code, response.json()) == (503, UNAVAILABLE_REST)
    response, timings["readyz"] = await get(stack, "/readyz")
    assert response.status_code == 503
    assert response.json()["database"] == "down"
    response, _ = await get(stack, "/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})

    print(
        "\n[database outage] replies while PostgreSQL is unreachable: "
        + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in timings.items())
    )
    slow = {name: seconds for name, seconds in timings.items() if seconds > FAIL_FAST}
    assert not slow, f"requests hung instead of failing fast: {slow}"

    await proxy.start()
    await wait_ready(stack)

    # The same WebSocket connection: subscribes, writes, reads and events work again.
    await subscribe(client, refused_tag, "s2")
    body = f"after the outage #{tag}"
    created, _ = await ask(client, {"action": "create", "data": {"body": body}, "request_id": "c2"})
    second = created["data"]
    assert created == {
        "errors": [],
        "data": {
            "pk": second["pk"],
            "author": user.id,
            "body": body,
            "created_at": second["created_at"],
            "version": 1,
        },
        "action": "create",
        "response_status": 201,
        "request_id": "c2",
    }
    assert await client.recv() == event("create", second["pk"], second, "sub")
    listed, _ = await ask(client, {"action": "list", "request_id": "l2"})
    assert listed == {
        "errors": [],
        "data": [second, first],
        "action": "list",
        "response_status": 200,
        "request_id": "l2",
    }
    response, _ = await get(stack, "/posts")
    assert (response.status_code, response.json()) == (200, [second, first])
    response, _ = await request(
        stack, "POST", "/posts", json={"body": f"rest #{tag}"}, headers=user.headers
    )
    assert response.status_code == 201, response.text


async def test_a_new_connection_during_the_outage_is_told_to_come_back_later(
    outage: tuple[Stack, TcpProxy],
) -> None:
    """The handshake itself needs the database (the token's user is looked up): it must be
    refused in a way a client can tell from a bad token (403) and from a server bug (500)."""
    stack, proxy = outage
    user = await stack.user()
    await proxy.stop()
    started = time.monotonic()
    refused: Any = None
    try:
        client = await stack.connect(user)
    except Exception as error:  # the handshake was answered with an HTTP status
        refused = error
    else:
        # Accepted: then it must be closed at once with 1013 (try again later)...
        with contextlib.suppress(Exception):
            await client.recv(timeout=FAIL_FAST)
        refused = client.connection.close_code
    elapsed = time.monotonic() - started
    print(f"\n[database outage] new authenticated connection: {refused!r} in {elapsed:.2f}s")
    assert elapsed < FAIL_FAST
    status = getattr(getattr(refused, "response", None), "status_code", None)
    assert status == 503 or refused == 1013, refused


async def test_a_database_that_stops_answering_gets_503_fast(
    outage: tuple[Stack, TcpProxy],
) -> None:
    """PostgreSQL (or the path to it) hangs: connections stay open, nothing comes back."""
    stack, proxy = outage
    user = await stack.user()
    client = await stack.connect(user)
    reply, _ = await ask(client, {"action": "list", "request_id": "l0"})
    assert reply["response_status"] == 200, reply

    proxy.freeze()
    reply, elapsed = await ask_within(client, {"action": "list", "request_id": "l1"}, FAIL_FAST)
    print(f"\n[database outage] frozen database: list answered in {elapsed:.1f}s")
    assert reply == unavailable("list", "l1")
    response, elapsed = await get(stack, "/posts")
    assert (response.status_code, response.json()) == (503, UNAVAILABLE_REST)
    assert elapsed < FAIL_FAST

    await proxy.stop()
    await proxy.start()
    await wait_ready(stack)
    reply, _ = await ask(client, {"action": "list", "request_id": "l2"})
    assert reply == {
        "errors": [],
        "data": [],
        "action": "list",
        "response_status": 200,
        "request_id": "l2",
    }


async def test_rest_503s_are_not_logged_as_crashes(
    outage: tuple[Stack, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    stack, proxy = outage
    user = await stack.user()
    await proxy.stop()
    caplog.clear()
    response, _ = await get(stack, "/posts")
    assert response.status_code == 503
    response, _ = await request(stack, "POST", "/posts", json={"body": "x"}, headers=user.headers)
    assert response.status_code == 503
    messages = [record.getMessage() for record in caplog.records]
    assert any("service unavailable" in message for message in messages), messages  # captured
    crashes = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR
    ]
    assert crashes == []
