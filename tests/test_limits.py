"""Per-connection and per-worker limits, each on a server of its own with tight settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.support import TIMEOUT, Endpoint, fail, ok, sqlite_server, subscribe, unique


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start in-process servers, each on a fresh SQLite file with the given settings."""
    async with AsyncExitStack() as stack:
        endpoints: list[Endpoint] = []

        async def start(**limits: Any) -> Endpoint:
            server = await stack.enter_async_context(sqlite_server(tmp_path, **limits))
            endpoints.append(Endpoint(f"http://127.0.0.1:{server.port}"))
            return endpoints[-1]

        yield start
        for endpoint in endpoints:
            await endpoint.close_clients()


async def refused(url: str, **options: Any) -> int:
    """The HTTP status of a refused handshake."""
    with pytest.raises(InvalidStatus) as error:
        async with asyncio.timeout(TIMEOUT):
            await websockets.connect(url, **options)
    return error.value.response.status_code


async def test_an_oversized_frame_closes_with_1009(limited: Callable[..., Any]) -> None:
    server = await limited(ws_max_frame_bytes=1024)
    client = await server.connect()
    reply = await client.ask({"action": "list", "body_contains": "x" * 900, "request_id": 1})
    assert reply["response_status"] == 200  # under the limit: answered
    await client.send({"action": "list", "body_contains": "é" * 600})  # 1,200 bytes in UTF-8
    assert await client.close_code() == 1009
    assert (await (await server.connect()).ask({"action": "list"}))["response_status"] == 200


async def test_excess_requests_get_429_and_a_flood_is_closed(limited: Callable[..., Any]) -> None:
    server = await limited(ws_rate_per_second=0.001, ws_rate_burst=5, ws_flood_close_after=10)
    client = await server.connect()
    for n in range(8):
        await client.send({"action": "list", "limit": 1, "request_id": n})
    replies = [await client.recv() for _ in range(8)]
    assert replies[:5] == [ok("list", [], n) for n in range(5)]
    assert replies[5:] == [fail("list", 429, ["Request was throttled."], n) for n in range(5, 8)]
    # Keep flooding: the tenth throttled request in a row closes the connection (1008).
    for n in range(8, 20):
        await client.send({"action": "list", "request_id": n})
    assert await client.close_code() == 1008


async def test_subscriptions_per_connection_are_capped(limited: Callable[..., Any]) -> None:
    server = await limited(ws_max_subscriptions=3)
    client = await server.connect(await server.user())
    tags = [unique("cap") for _ in range(3)]
    for index, tag in enumerate(tags):
        await subscribe(client, tag, index % 2)  # asserts the whole 201 reply
    # The same tag again under the same id is no new subscription.
    await subscribe(client, tags[0], 0)
    over = await client.ask(
        {"action": "subscribe_to_hashtag", "hashtag": unique("cap"), "request_id": 5}
    )
    assert over == fail(
        "subscribe_to_hashtag",
        400,
        [{"hashtag": ["Ensure this connection has no more than 3 subscriptions."]}],
        5,
    )
    # Unsubscribing frees a place.
    await client.ask({"action": "unsubscribe_from_hashtag", "hashtag": tags[1], "request_id": 1})
    await subscribe(client, unique("cap"), 6)


async def test_hashtag_length_is_capped(limited: Callable[..., Any]) -> None:
    server = await limited(hashtag_max_length=8)
    client = await server.connect(await server.user())
    await subscribe(client, "#abcdefgh", 1)  # asserts the whole 201 reply
    assert await client.ask(
        {"action": "subscribe_to_hashtag", "hashtag": "#abcdefghi", "request_id": 2}
    ) == fail(
        "subscribe_to_hashtag",
        400,
        [{"hashtag": ["Ensure this field has no more than 8 characters."]}],
        2,
    )


async def test_connections_per_user_are_capped(limited: Callable[..., Any]) -> None:
    server = await limited(ws_max_connections_per_user=2)
    alice, bob = await server.user(), await server.user()
    first = await server.connect(alice)
    await server.connect(alice)
    assert await refused(f"{server.ws_url}?token={alice.token}") == 403
    await server.connect(bob)  # another user is not affected
    # Authenticating an anonymous connection as alice counts against her too.
    anonymous = await server.connect()
    reply = await anonymous.ask({"action": "authenticate", "token": alice.token, "request_id": 1})
    assert reply == fail("authenticate", 429, ["Too many connections for this user."], 1)
    assert (await anonymous.ask({"action": "create", "data": {"body": "x"}}))[
        "response_status"
    ] == 403
    # A place frees up when a connection ends.
    await first.close()
    async with asyncio.timeout(TIMEOUT):
        while True:
            reply = await anonymous.ask({"action": "authenticate", "token": alice.token})
            if reply["response_status"] == 200:
                break
            await asyncio.sleep(0.02)  # polling the server's release of the closed socket


async def test_connections_per_address_are_capped(limited: Callable[..., Any]) -> None:
    server = await limited(ws_max_connections_per_ip=3)
    for _ in range(3):
        await server.connect()
    assert await refused(server.ws_url) == 403


@pytest.mark.parametrize(
    ("allowed", "origin", "admitted"),
    [
        ("", None, True),  # non-browser clients send no Origin
        ("", "same-host", True),
        ("", "http://evil.example", False),
        ("", "http://127.0.0.1:1", False),  # same address, another port: another origin
        ("https://app.example", "https://app.example", True),
        ("https://app.example", "same-host", False),
        ("https://app.example,https://b.example", "https://b.example", True),
    ],
)
async def test_browser_origins_are_checked(
    limited: Callable[..., Any], allowed: str, origin: str | None, admitted: bool
) -> None:
    server = await limited(allowed_origins=allowed)
    if origin == "same-host":
        origin = server.base_url
    headers = {"Origin": origin} if origin else None
    if admitted:
        client = await server.connect(headers=headers)
        assert (await client.ask({"action": "list"}))["response_status"] == 200
    else:
        assert await refused(server.ws_url, additional_headers=headers) == 403


async def test_garbage_frames_count_against_the_rate(limited: Callable[..., Any]) -> None:
    """Invalid frames cost a token too, so a flood of garbage is throttled like requests."""
    server = await limited(ws_rate_per_second=0.001, ws_rate_burst=3, ws_flood_close_after=50)
    client = await server.connect()
    for _ in range(3):
        await client.send("not json")
    await client.send(b"\x00binary")
    await client.send({"action": "list", "request_id": 7})
    replies = [await client.recv() for _ in range(5)]
    assert replies[:3] == [fail(None, 400, ["Invalid JSON."])] * 3
    assert replies[3:] == [
        fail(None, 429, ["Request was throttled."]),
        fail("list", 429, ["Request was throttled."], 7),
    ]
