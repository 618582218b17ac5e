"""GET /hashtags/{tag}/events: the SSE mirror of a hashtag subscription, on each stack, read
with httpx streaming as a plain HTTP client would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support import Endpoint, Stack, User, event, sqlite_server, unique

TIMEOUT = 10.0


class SseReader:
    """Messages of one event stream: (fields, comments) per blank-line-terminated block."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def message(self) -> dict[str, Any]:
        """The next block as {"id", "event", "data" (parsed), "comments"}."""
        block: dict[str, Any] = {"comments": []}
        async with asyncio.timeout(TIMEOUT):
            async for line in self._lines:
                if line == "":
                    if len(block) > 1 or block["comments"]:
                        return block
                    continue
                if line.startswith(":"):
                    block["comments"].append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                block[name] = value.removeprefix(" ")
        raise AssertionError(f"stream ended; last block {block}")

    async def event(self) -> dict[str, Any]:
        """The next message that is an event (comments skipped). An id-only message follows
        each event: the watermark, which is what a browser sends back when it reconnects."""
        while True:
            block = await self.message()
            if "event" in block:
                block["data"] = json.loads(block["data"])
                assert await self.message() == {"comments": [], "id": str(block["data"]["safe"])}
                return block


@asynccontextmanager
async def stream(
    endpoint: Endpoint, tag: str, headers: dict[str, str] | None = None, query: str = ""
) -> AsyncIterator[SseReader]:
    async with (
        httpx.AsyncClient(base_url=endpoint.base_url, timeout=TIMEOUT) as http,
        http.stream("GET", f"/hashtags/{tag}/events{query}", headers=headers) as response,
    ):
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(response)
        # The stream opens with a comment: from here on, the subscription is live. Its id is
        # the watermark to resume from should the stream drop before any event.
        opening = await reader.message()
        assert opening == {"comments": ["subscribed"], "id": response.headers["x-livepost-safe"]}
        yield reader


async def rest_create(endpoint: Endpoint, user: User, body: str) -> dict[str, Any]:
    async with endpoint.http() as http:
        response = await http.post("/posts", json={"body": body}, headers=user.headers)
        assert response.status_code == 201, response.text
        return dict(response.json())


async def test_stream_carries_events_with_offset_ids(live: Stack) -> None:
    user = await live.user()
    tag = unique("sse")
    async with stream(live, tag, headers=user.headers) as reader:
        offset = int(reader.response.headers["x-livepost-offset"])
        post = await rest_create(live, user, f"#{tag} hello")
        received = await reader.event()
        assert received["event"] == "create"
        assert int(received["id"]) > offset
        assert received["data"] == event("create", post["pk"], post, None, int(received["id"]))
        async with live.http() as http:
            deleted = await http.delete(f"/posts/{post['pk']}", headers=user.headers)
            assert deleted.status_code == 204
        gone = await reader.event()
        assert (gone["event"], gone["data"]["data"]) == ("delete", {"pk": post["pk"]})
        assert int(gone["id"]) > int(received["id"])


async def test_token_in_the_query_works_too(live: Stack) -> None:
    user = await live.user()
    tag = unique("sseq")
    async with stream(live, f"%23{tag}", query=f"?token={user.token}") as reader:
        post = await rest_create(live, user, f"#{tag} by query")
        assert (await reader.event())["data"]["pk"] == post["pk"]


async def test_last_event_id_resumes_like_since(live: Stack) -> None:
    user = await live.user()
    tag = unique("sser")
    async with stream(live, tag, headers=user.headers) as reader:
        first = await rest_create(live, user, f"#{tag} first")
        seen = await reader.event()
    # Disconnected: two changes missed.
    second = await rest_create(live, user, f"#{tag} second")
    third = await rest_create(live, user, f"#{tag} third")
    headers = {**user.headers, "Last-Event-ID": seen["id"]}
    async with stream(live, tag, headers=headers) as reader:
        assert reader.response.headers["x-livepost-recovered"] == "true"
        replayed = [await reader.event(), await reader.event()]
        assert [e["data"]["pk"] for e in replayed] == [second["pk"], third["pk"]]
        assert int(seen["id"]) < int(replayed[0]["id"]) < int(replayed[1]["id"])
        fourth = await rest_create(live, user, f"#{tag} live")
        assert (await reader.event())["data"]["pk"] == fourth["pk"]
    assert first["pk"] == seen["data"]["pk"]


async def test_last_event_id_beyond_the_log_is_not_recovered(live: Stack) -> None:
    user = await live.user()
    headers = {**user.headers, "Last-Event-ID": str(2**62)}
    async with stream(live, unique("ssef"), headers=headers) as reader:
        assert reader.response.headers["x-livepost-recovered"] == "false"


async def test_refusals(live: Stack) -> None:
    user = await live.user()
    async with live.http() as http:
        anonymous = await http.get(f"/hashtags/{unique('x')}/events")
        assert (anonymous.status_code, anonymous.json()) == (401, {"detail": "Not authenticated"})
        forged = await http.get(f"/hashtags/{unique('x')}/events", params={"token": "nope"})
        assert (forged.status_code, forged.json()) == (401, {"detail": "Invalid token."})
        bad_tag = await http.get("/hashtags/not-a-tag/events", headers=user.headers)
        assert (bad_tag.status_code, bad_tag.json()) == (400, {"detail": "Enter a valid hashtag."})
        bad_id = await http.get(
            f"/hashtags/{unique('x')}/events", headers={**user.headers, "Last-Event-ID": "soon"}
        )
        assert bad_id.status_code == 400


async def test_keep_alive_comments_and_release_on_disconnect(tmp_path: Path) -> None:
    async with sqlite_server(tmp_path, sse_keepalive_seconds=0.1) as server:
        endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
        user = await endpoint.user()
        tag = unique("ssek")
        async with stream(endpoint, tag, headers=user.headers) as reader:
            assert tag in server.runtime.hub.local_tags
            assert (await reader.message())["comments"] == ["keep-alive"]
        # The client left: its subscription goes with it.
        async with asyncio.timeout(TIMEOUT):
            while tag in server.runtime.hub.local_tags:  # noqa: ASYNC110
                await asyncio.sleep(0.02)


async def test_a_stopping_worker_refuses_streams_with_503(tmp_path: Path) -> None:
    async with sqlite_server(tmp_path) as server:
        endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
        user = await endpoint.user()
        server.runtime.admission.closing = True  # what SIGTERM's first step sets
        async with endpoint.http() as http:
            refused = await http.get(f"/hashtags/{unique('x')}/events", headers=user.headers)
        assert (refused.status_code, refused.json()) == (
            503,
            {"detail": "Server is stopping, try again."},
        )
