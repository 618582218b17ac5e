"""Helpers for the admin's tests: an admin user, and an HTTP client signed in at /admin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.support import PASSWORD, Endpoint, Server, User


async def admin_user(endpoint: Endpoint, server: Server) -> User:
    """A registered user whose admin flag the server's own account service set."""
    user = await endpoint.user()
    assert await server.runtime.accounts.set_flags(user.id, is_admin=True)
    return user


async def sign_in(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> Any:
    return await client.post("/admin/login", data={"username": username, "password": password})


@asynccontextmanager
async def admin_session(endpoint: Endpoint, username: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client holding the admin's session cookie."""
    async with endpoint.http() as client:
        response = await sign_in(client, username)
        assert response.status_code == 302, response.text
        assert response.headers["location"].endswith("/admin/")
        yield client


async def edit_post(client: httpx.AsyncClient, pk: int, body: str) -> None:
    """Submit the post's edit form as the admin's browser does."""
    response = await client.post(f"/admin/post/edit/{pk}", data={"body": body, "save": "Save"})
    assert response.status_code == 302, response.text
    assert response.headers["location"].endswith("/admin/post/list")


async def delete_post(client: httpx.AsyncClient, pk: int) -> None:
    """The request the list page's delete dialog sends; sqladmin answers with the URL to go
    to next, which carries `error=` when the delete failed."""
    response = await client.delete("/admin/post/delete", params={"pks": str(pk)})
    assert response.status_code == 200, response.text
    assert "error" not in response.text, response.text


async def deactivate(client: httpx.AsyncClient, user_id: int) -> None:
    """Save the user's form with both boxes unticked (not an admin, not active)."""
    response = await client.post(f"/admin/user/edit/{user_id}", data={"save": "Save"})
    assert response.status_code == 302, response.text
    assert response.headers["location"].endswith("/admin/user/list")
