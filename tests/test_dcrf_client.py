"""dcrf-client, the npm package DCRF frontends use, works against livepost unchanged: the
example in examples/dcrf-client/ runs in Node against every stack and its output is checked.

It needs Node.js and npm; `npm ci` installs the example's locked packages when its
node_modules/ is missing. Without Node the test skips, or fails under
LIVEPOST_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support import Stack, assert_post_is, event, unique

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dcrf-client"
REQUIRE = os.environ.get("LIVEPOST_REQUIRE_SERVICES") == "1"
NPM_CI_TIMEOUT = 300.0
RUN_TIMEOUT = 60.0

pytestmark = pytest.mark.timeout(NPM_CI_TIMEOUT + RUN_TIMEOUT)


async def run(*command: str, timeout: float) -> tuple[int, str, str]:  # noqa: ASYNC109
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=EXAMPLE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture(scope="module")
async def node() -> str:
    """The node executable, with the example's packages installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "the dcrf-client test needs Node.js and npm on PATH (apt-get install nodejs npm)"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    if not (EXAMPLE / "node_modules").is_dir():
        code, out, err = await run(npm, "ci", "--no-audit", "--no-fund", timeout=NPM_CI_TIMEOUT)
        if code != 0:
            pytest.fail(f"`npm ci` in {EXAMPLE} failed ({code}):\n{out}{err}")
    return node


async def test_dcrf_client_follows_a_hashtag_and_writes(live: Stack, node: str) -> None:
    user = await live.user()
    tag = unique("dcrf")
    code, out, err = await run(
        node, "session.js", live.ws_url, user.token, tag, timeout=RUN_TIMEOUT
    )
    assert code == 0, f"session.js exited {code}:\n{out}{err}"
    lines = [json.loads(line) for line in out.splitlines()]
    replies: dict[str, Any] = {}
    events = []
    for line in lines:
        ((kind, value),) = line.items()
        if kind == "event":
            events.append(value)
        else:
            replies[kind] = value

    assert set(replies["subscribe_to_hashtag"]) == {"offset", "safe"}, replies
    created, updated = replies["create"], replies["update"]
    assert_post_is(created, author=user.id, body=f"Hello from dcrf-client #{tag}", version=1)
    assert updated == {**created, "body": f"Edited, still #{tag}", "version": 2}
    assert replies["list"] == [updated]
    assert replies["delete"] is None
    assert replies["unsubscribe_from_hashtag"] == {}
    # Every event came wrapped in the "posts" stream (the client's dispatcher only matches
    # those), once, with the subscription's request_id.
    subscription = f"follow-{tag}"
    pk = created["pk"]
    assert events == [
        event("create", pk, created, subscription),
        event("update", pk, updated, subscription),
        event("delete", pk, {"pk": pk}, subscription),
    ]
    async with live.http() as client:
        assert (await client.get(f"/posts/{pk}")).status_code == 404
