"""examples/listen.py, run as a user would, against a real server it reaches through a proxy the
test cuts: it reconnects, resumes from the watermark it was given, and prints each event once."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.support import TIMEOUT, Endpoint, User, sqlite_server, unique
from tests.tcp_proxy import TcpProxy

LISTEN = Path(__file__).resolve().parents[1] / "examples" / "listen.py"


async def post(endpoint: Endpoint, user: User, body: str) -> dict[str, Any]:
    async with endpoint.http() as http:
        response = await http.post("/posts", json={"body": body}, headers=user.headers)
        assert response.status_code == 201, response.text
        return dict(response.json())


async def line(stream: asyncio.StreamReader) -> Any:
    async with asyncio.timeout(TIMEOUT):
        text = await stream.readline()
    assert text, "the example exited"
    return json.loads(text) if text.startswith(b"{") else text.decode()


async def test_listen_resumes_from_the_watermark_and_prints_each_event_once(
    tmp_path: Path,
) -> None:
    async with sqlite_server(tmp_path) as server:
        endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
        user = await endpoint.user()
        tag = unique("listen")
        proxy = TcpProxy("127.0.0.1", server.port)
        await proxy.start()
        env = os.environ | {"LIVEPOST_WS": f"ws://127.0.0.1:{proxy.port}/ws"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(LISTEN), user.token, tag, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None and process.stderr is not None
        try:
            reply = await line(process.stdout)
            assert (reply["action"], reply["response_status"]) == ("subscribe_to_hashtag", 201)
            first = await post(endpoint, user, f"#{tag} before the drop")
            assert (await line(process.stdout))["data"] == first

            await proxy.stop()
            assert "resuming from" in await line(process.stderr)
            missed = [await post(endpoint, user, f"#{tag} missed {i}") for i in range(2)]
            await proxy.start()

            again = await line(process.stdout)
            assert again["data"]["recovered"] is True
            # The resume may re-send the first post too; the example prints it once.
            assert [(await line(process.stdout))["data"] for _ in missed] == missed
            last = await post(endpoint, user, f"#{tag} live again")
            assert (await line(process.stdout))["data"] == last
        finally:
            process.kill()
            await process.wait()
            if proxy.running:
                await proxy.stop()
