"""Test helpers: a real uvicorn server per stack, and real WebSocket and HTTP clients."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app.config import Settings
from app.main import create_app
from app.migrations import upgrade_to_head
from app.worker import uvicorn_options as worker_options

TIMEOUT = 10.0
PASSWORD = "correct horse battery"
CLUSTER_SECRET = "cluster-test-secret-" + "y" * 32
CLI_TIMEOUT = 60.0
_SCRIPT = Path(sys.executable).with_name("livepost")
# The installed console script, or the same entry point through the interpreter.
CLI_COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "app.cli.main"]


def unique(prefix: str = "t") -> str:
    """A fresh name (hashtag, username, marker) so tests never see each other's data."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class Server:
    """A uvicorn server running the app on an ephemeral loopback port, in this event loop."""

    def __init__(self, settings: Settings, **uvicorn_options: Any) -> None:
        self.app = create_app(settings)
        # As every worker runs (app/worker.py), quieter, and without keepalive pings unless
        # a test asks for them.
        options = worker_options(settings) | {"log_level": "warning", "ws_ping_interval": None}
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, lifespan="on", **(options | uvicorn_options)
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        async with asyncio.timeout(TIMEOUT):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            async with asyncio.timeout(TIMEOUT):
                await self._task

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    @property
    def sockets(self) -> list[Any]:
        """uvicorn's protocol objects of the connections open now."""
        return list(self._server.server_state.connections)


@asynccontextmanager
async def sqlite_server(
    directory: Path, *, uvicorn_options: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[Server]:
    """A started in-process server on a fresh, migrated SQLite file in directory, with these
    settings (e.g. tight limits), stopped afterwards."""
    url = f"sqlite+aiosqlite:///{directory / unique('db')}.db"
    # upgrade_to_head runs its own event loop: keep it off this one.
    await asyncio.to_thread(upgrade_to_head, url)
    settings.setdefault("jwt_secret", "sqlite-server-secret-" + "q" * 32)
    server = Server(Settings(database_url=url, **settings), **(uvicorn_options or {}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class WsClient:
    """A real WebSocket client speaking JSON frames."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def send(self, message: Any) -> None:
        await self.connection.send(
            message if isinstance(message, str | bytes) else json.dumps(message)
        )

    async def recv(self, timeout: float = TIMEOUT) -> Any:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            return json.loads(await self.connection.recv())

    async def ask(self, message: dict[str, Any]) -> Any:
        """Send a request and return the next frame (its reply, when nothing else is queued)."""
        await self.send(message)
        return await self.recv()

    async def close(self) -> None:
        await self.connection.close()

    async def close_code(self) -> int | None:
        """Read until the server closes the connection; the code of its close frame."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await self.connection.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


@dataclass
class User:
    id: int
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Endpoint:
    """Clients for one base URL: a worker, a load balancer or an in-process server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._clients: list[WsClient] = []

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url.removeprefix("http") + "/ws"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=TIMEOUT)

    async def user(self) -> User:
        username = unique("u")
        form = {"username": username, "password": PASSWORD}
        async with self.http() as client:
            created = await client.post("/auth/register", json=form)
            assert created.status_code == 201, created.text
            token = await client.post("/auth/token", data=form)
            assert token.status_code == 200, token.text
        return User(created.json()["id"], username, token.json()["access_token"])

    async def connect(
        self, user: User | None = None, *, query: str = "", headers: dict[str, str] | None = None
    ) -> WsClient:
        url = self.ws_url + (f"?token={user.token}" if user else query)
        async with asyncio.timeout(TIMEOUT):
            connection = await websockets.connect(url, additional_headers=headers, max_size=None)
        client = WsClient(connection)
        self._clients.append(client)
        return client

    async def close_clients(self) -> None:
        for client in self._clients:
            await client.close()
        self._clients.clear()


class Stack(Endpoint):
    """One running deployment under test: its settings, server and clients."""

    def __init__(self, name: str, settings: Settings, server: Server) -> None:
        super().__init__(f"http://127.0.0.1:{server.port}")
        self.name = name
        self.settings = settings
        self.server = server


# --- expected replies (PROTOCOL.md's five keys) --------------------------------------------


def ok(action: str, data: Any, request_id: Any = None, status: int = 200) -> dict[str, Any]:
    """A successful reply, all five keys."""
    return {
        "errors": [],
        "data": data,
        "action": action,
        "response_status": status,
        "request_id": request_id,
    }


def fail(action: Any, status: int, errors: list[Any], request_id: Any = None) -> dict[str, Any]:
    """A failed reply: `data` is null on failure."""
    return {
        "errors": errors,
        "data": None,
        "action": action,
        "response_status": status,
        "request_id": request_id,
    }


def wrapped(payload: dict[str, Any], stream: str = "posts") -> dict[str, Any]:
    """A multiplexed frame: the request, reply or event inside its stream."""
    return {"stream": stream, "payload": payload}


class _AnyOffset:
    """Matches any change-log offset (a positive integer) inside an expected frame; the tests
    of the change log check the values themselves."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and not isinstance(other, bool) and other > 0

    def __repr__(self) -> str:
        return "<offset>"


OFFSET: Any = _AnyOffset()


class _AnyWatermark:
    """Matches any resume watermark (an integer >= 0) inside an expected frame; the watermark
    tests check the values themselves."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and not isinstance(other, bool) and other >= 0

    def __repr__(self) -> str:
        return "<safe>"


SAFE: Any = _AnyWatermark()


def event(action: str, pk: int, data: Any, request_id: Any, offset: Any = OFFSET) -> dict[str, Any]:
    """An event frame as the contract shapes it (offset: where its change is in the log;
    safe: the watermark to resume from)."""
    return {
        "action": action,
        "pk": pk,
        "data": data,
        "offset": offset,
        "safe": SAFE,
        "request_id": request_id,
    }


def subscribed(reply: Any, request_id: Any) -> dict[str, Any]:
    """The whole 201 reply to a subscribe, whose data is the log's current offset and the
    watermark (never above it)."""
    data = reply.get("data") if isinstance(reply, dict) else None
    offset = data.get("offset") if isinstance(data, dict) else None
    safe = data.get("safe") if isinstance(data, dict) else None
    assert isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0, reply
    assert isinstance(safe, int) and not isinstance(safe, bool) and 0 <= safe <= offset, reply
    return ok("subscribe_to_hashtag", {"offset": offset, "safe": safe}, request_id, 201)


async def subscribe(client: WsClient, tag: str, request_id: Any) -> int:
    """Subscribe; returns the log's current offset from the reply."""
    reply = await client.ask(
        {"action": "subscribe_to_hashtag", "hashtag": tag, "request_id": request_id}
    )
    assert reply == subscribed(reply, request_id)
    return int(reply["data"]["offset"])


async def barrier(stack: Endpoint, writer: User, *clients: WsClient) -> None:
    """Wait until every event published before now has reached each client.

    Each client subscribes to a fresh tag under its own request id; one post with that tag is
    written; events reach a connection in publish order, so once each client sees the
    barrier's event, any earlier event would already have arrived. No sleeping."""
    tag = unique("sync")
    for client in clients:
        await subscribe(client, tag, f"barrier-{tag}")
    async with stack.http() as http:
        response = await http.post("/posts", json={"body": f"#{tag}"}, headers=writer.headers)
        assert response.status_code == 201
    for client in clients:
        event = await client.recv()
        assert event["request_id"] == f"barrier-{tag}", f"unexpected frame before barrier: {event}"
        assert (
            await client.ask(
                {
                    "action": "unsubscribe_from_hashtag",
                    "hashtag": tag,
                    "request_id": f"barrier-{tag}",
                }
            )
        )["response_status"] == 204


def post_json(post: dict[str, Any]) -> dict[str, Any]:
    """The expected post shape: exactly these keys."""
    assert set(post) == {"pk", "author", "body", "created_at", "version"}, post
    return post


def assert_post_is(post: dict[str, Any], *, author: int, body: str, version: int) -> None:
    """The whole post: exactly its five keys, with these author, body and version."""
    post_json(post)
    assert post == {
        "pk": post["pk"],
        "author": author,
        "body": body,
        "created_at": post["created_at"],
        "version": version,
    }


# --- the livepost CLI ----------------------------------------------------------------------


@dataclass
class CliResult:
    """What one run of the `livepost` console script did."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.returncode == 0, self
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        assert self.returncode == 0, self
        return [json.loads(line) for line in self.stdout.splitlines()]


async def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, stdin: str | None = None
) -> CliResult:
    """Run `livepost *args` as a subprocess with exactly env (and cwd), and stdin as its
    standard input (a pipe, never a terminal; empty by default).

    The process is killed if it outlasts CLI_TIMEOUT (TimeoutError) or the caller gives up."""
    process = await asyncio.create_subprocess_exec(
        *CLI_COMMAND,
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT):
            stdout, stderr = await process.communicate(None if stdin is None else stdin.encode())
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


# ---- actions over a socket, each checking its reply -------------------------------------


async def resume(client: WsClient, tag: str, since: Any, request_id: Any) -> dict[str, Any]:
    """subscribe_to_hashtag with since; returns the reply's data after checking its shape."""
    reply = await client.ask(
        {"action": "subscribe_to_hashtag", "hashtag": tag, "since": since, "request_id": request_id}
    )
    data = reply["data"]
    assert reply == ok("subscribe_to_hashtag", data, request_id, 201), reply
    assert set(data) == {"offset", "safe", "recovered"} and isinstance(data["offset"], int), data
    # The frames of the resume come after the reply, so its watermark is no higher than since.
    assert isinstance(data["safe"], int) and 0 <= data["safe"] <= min(since, data["offset"]), data
    return dict(data)


async def create(client: WsClient, body: str) -> dict[str, Any]:
    reply = await client.ask({"action": "create", "data": {"body": body}, "request_id": "w"})
    assert reply["response_status"] == 201, reply
    return dict(reply["data"])


async def edit(client: WsClient, pk: int, body: str) -> dict[str, Any]:
    reply = await client.ask(
        {"action": "patch", "pk": pk, "data": {"body": body}, "request_id": "w"}
    )
    assert reply["response_status"] == 200, reply
    return dict(reply["data"])


async def remove(client: WsClient, pk: int) -> None:
    reply = await client.ask({"action": "delete", "pk": pk, "request_id": "w"})
    assert reply["response_status"] == 204, reply


async def next_event(client: WsClient) -> dict[str, Any]:
    frame = await client.recv()
    assert "response_status" not in frame, frame
    return dict(frame)


async def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    """Rows of one statement, read on a connection of the test's own."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql), params)).all())
    finally:
        await engine.dispose()
