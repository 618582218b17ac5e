"""Post writes from the command line, through the same PostService as every other path.

With Redis the CLI process publishes like any worker. With the in-process broker its events
could not reach the server's subscribers, so when a server is running the write is handed to
that server's REST API (and so to its PostService and broker); with no server running nobody
is subscribed, and the write is made here directly.
"""

from __future__ import annotations

from typing import Any

import httpx

from app.cli.errors import CommandError, invalid_fields
from app.config import Settings
from app.posts.service import PostNotFound
from app.posts.validation import FieldErrors
from app.runtime import Runtime


class WriteFailed(Exception):
    """The write was refused (not found, invalid); the message says why."""


async def write_post(
    settings: Settings, operation: str, username: str, pk: int | None, body: str | None
) -> dict[str, Any] | None:
    """create / edit / delete as `username`; returns the post (None for delete)."""
    runtime = await Runtime.start(settings)
    try:
        user_id = await runtime.accounts.user_id_by_name(username)
        if user_id is None:
            raise CommandError(f"no user {username!r}")
        if settings.redis_url is None:
            server = _server_url(settings)
            if await _is_up(server):
                token = runtime.accounts.token_for(user_id)
                return await _remote(server, token, operation, pk, body)
        return await _local(runtime, user_id, operation, pk, body)
    except PostNotFound:
        raise CommandError("Not found") from None
    except WriteFailed as error:
        raise CommandError(str(error)) from None
    except FieldErrors as error:
        raise CommandError(_describe(error.errors)) from None
    finally:
        await runtime.close()


async def _local(
    runtime: Runtime, user_id: int, operation: str, pk: int | None, body: str | None
) -> dict[str, Any] | None:
    if operation == "create":
        return await runtime.posts.create(user_id, body)
    assert pk is not None
    if operation == "edit":
        return await runtime.posts.update(user_id, pk, body)
    await runtime.posts.delete(user_id, pk)
    return None


def _server_url(settings: Settings) -> str:
    if settings.server_url:
        return settings.server_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


async def _is_up(server: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(f"{server}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _remote(
    server: str, token: str, operation: str, pk: int | None, body: str | None
) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server, headers=headers, timeout=30.0) as client:
        if operation == "create":
            response = await client.post("/posts", json={"body": body})
        elif operation == "edit":
            response = await client.put(f"/posts/{pk}", json={"body": body})
        else:
            response = await client.delete(f"/posts/{pk}")
    if response.status_code == 404:
        raise WriteFailed("Not found")
    if response.status_code >= 400:
        raise WriteFailed(_refusal(server, response))
    return None if response.status_code == 204 else dict(response.json())


def _refusal(server: str, response: httpx.Response) -> str:
    """The server's answer in words: invalid fields as the direct write says them, anything
    else as its status and `detail` (or its text: a proxy's error page is not JSON)."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if response.status_code == 422 and isinstance(detail, list):
        return invalid_fields(detail, located=True)
    if not isinstance(detail, str):
        detail = " ".join(response.text.split())[:200] or response.reason_phrase
    return f"the server at {server} answered {response.status_code}: {detail}"


def _describe(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
