"""The admin at /admin against a real server on every stack: who gets in, the cookie, the
pages, and that its writes reach subscribers exactly as the author's own do."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from tests.admin_support import (
    admin_session,
    admin_user,
    deactivate,
    delete_post,
    edit_post,
    sign_in,
)
from tests.support import (
    PASSWORD,
    TIMEOUT,
    Stack,
    create,
    event,
    next_event,
    sqlite_server,
    subscribe,
    unique,
)

pytestmark = pytest.mark.timeout(120)


# --- who gets in ---------------------------------------------------------------------------


async def test_sign_in_is_refused_to_a_non_admin(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        refused = await sign_in(client, user.username)
        wrong = await sign_in(client, user.username, "not the password")
        unknown = await sign_in(client, unique("nobody"))
        assert [r.status_code for r in (refused, wrong, unknown)] == [400, 400, 400]
        assert all("Invalid credentials." in r.text for r in (refused, wrong, unknown))
        assert "set-cookie" not in refused.headers
        # Without a session every page sends the browser to the sign-in form.
        for path in ("/admin/", "/admin/post/list", "/admin/user/edit/1"):
            response = await client.get(path)
            assert response.status_code == 302, path
            assert response.headers["location"].endswith("/admin/login")
        assert (await client.delete("/admin/post/delete", params={"pks": "1"})).status_code == 302


async def test_a_revoked_or_deactivated_admin_is_out_at_once(live: Stack) -> None:
    boss, other = await admin_user(live, live.server), await admin_user(live, live.server)
    async with admin_session(live, boss.username) as client:
        assert (await client.get("/admin/post/list")).status_code == 200
        await live.server.runtime.accounts.set_flags(boss.id, is_admin=False)
        response = await client.get("/admin/post/list")
        assert response.status_code == 302  # the same cookie no longer opens anything
    async with admin_session(live, other.username) as client:
        await live.server.runtime.deactivate_user(other.id)
        assert (await client.get("/admin/post/list")).status_code == 302
        assert (await sign_in(client, other.username)).status_code == 400


async def test_sign_in_is_throttled_like_the_token_endpoint(tmp_path: Path) -> None:
    async with sqlite_server(tmp_path, login_failures_per_username=3) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
            username = unique("boss")
            created = await client.post(
                "/auth/register", json={"username": username, "password": PASSWORD}
            )
            await server.runtime.accounts.set_flags(created.json()["id"], is_admin=True)
            for _ in range(3):
                assert (await sign_in(client, username, "wrong password")).status_code == 400
            # Now even the right password is not looked at, here and at /auth/token (the
            # same counters), until the window ends.
            throttled = await sign_in(client, username)
            assert throttled.status_code == 429
            assert int(throttled.headers["retry-after"]) > 0
            assert "Too many failed sign-ins; try again later." in throttled.text
            assert "set-cookie" not in throttled.headers
            token = await client.post(
                "/auth/token", data={"username": username, "password": PASSWORD}
            )
            assert token.status_code == 429
            # Another admin is not held back by it.
            second = unique("boss")
            created = await client.post(
                "/auth/register", json={"username": second, "password": PASSWORD}
            )
            await server.runtime.accounts.set_flags(created.json()["id"], is_admin=True)
            assert (await sign_in(client, second)).status_code == 302


async def test_session_cookie_is_httponly_strict_and_signed(live: Stack) -> None:
    boss = await admin_user(live, live.server)
    async with live.http() as client:
        response = await sign_in(client, boss.username)
    assert response.status_code == 302
    cookie = response.headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    value, *flags = [part.strip() for part in rest.split(";")]
    assert name == "livepost_admin"
    lowered = {flag.lower() for flag in flags}
    assert "httponly" in lowered
    assert "samesite=strict" in lowered
    assert "path=/admin" in lowered
    assert f"max-age={live.settings.admin_session_seconds}" in lowered
    # Signed: the same payload with a forged signature, or no signature, opens nothing.
    payload = value.split(".")[0]
    for forged in (payload, f"{payload}.AAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAA", value[:-2] + "xx"):
        async with httpx.AsyncClient(
            base_url=live.base_url, timeout=TIMEOUT, cookies={"livepost_admin": forged}
        ) as client:
            assert (await client.get("/admin/post/list")).status_code == 302, forged
    async with httpx.AsyncClient(
        base_url=live.base_url, timeout=TIMEOUT, cookies={"livepost_admin": value}
    ) as client:
        assert (await client.get("/admin/post/list")).status_code == 200


# --- the pages -----------------------------------------------------------------------------


def _bodies(html: str, marker: str) -> list[str]:
    return re.findall(rf"{marker}-\d\d", html)


async def test_post_list_searches_and_paginates(live: Stack) -> None:
    boss, author = await admin_user(live, live.server), await live.user()
    marker = unique("adm")
    async with live.http() as http:
        for n in range(12):
            response = await http.post(
                "/posts", json={"body": f"{marker}-{n:02d}"}, headers=author.headers
            )
            assert response.status_code == 201
    async with admin_session(live, boss.username) as client:
        first = await client.get("/admin/post/list", params={"search": marker.upper()})
        second = await client.get("/admin/post/list", params={"search": marker, "page": 2})
        missing = await client.get("/admin/post/list", params={"search": unique("none")})
        details = await client.get("/admin/post/list")
    assert first.status_code == second.status_code == missing.status_code == 200
    # Newest first, ten to a page, the search case-insensitive.
    assert _bodies(first.text, marker) == [f"{marker}-{n:02d}" for n in range(11, 1, -1)]
    assert _bodies(second.text, marker) == [f"{marker}-01", f"{marker}-00"]
    assert _bodies(missing.text, marker) == []
    assert details.status_code == 200


async def test_user_list_search_details_and_edit_form(live: Stack) -> None:
    boss, user = await admin_user(live, live.server), await live.user()
    async with admin_session(live, boss.username) as client:
        found = await client.get("/admin/user/list", params={"search": user.username})
        details = await client.get(f"/admin/user/details/{user.id}")
        form = await client.get(f"/admin/user/edit/{user.id}")
        export = await client.get("/admin/user/export/csv")
        create_user = await client.get("/admin/user/create")
        create_post = await client.get("/admin/post/create")
    assert found.status_code == 200 and user.username in found.text
    assert boss.username not in found.text
    assert details.status_code == 200 and user.username in details.text
    assert "argon2" not in details.text  # the password hash is never shown
    assert form.status_code == 200
    assert 'name="is_active"' in form.text and 'name="is_admin"' in form.text
    assert 'name="password_hash"' not in form.text
    assert export.status_code == 403
    # Posts are written by their authors, accounts made by registering or the CLI.
    assert create_user.status_code == create_post.status_code == 403


# --- the admin's writes fan out --------------------------------------------------------------


async def test_admin_edit_is_an_update_with_the_next_version(live: Stack) -> None:
    boss, author, watcher = (
        await admin_user(live, live.server), await live.user(), await live.user(),
    )  # fmt: skip
    tag = unique("adm")
    socket = await live.connect(watcher)
    await subscribe(socket, tag, "watch")
    writer = await live.connect(author)
    post = await create(writer, f"by the author #{tag}")
    assert await next_event(socket) == event("create", post["pk"], post, "watch")

    async with admin_session(live, boss.username) as client:
        await edit_post(client, post["pk"], f"  fixed by an admin #{tag}  ")
    async with live.http() as http:
        stored = (await http.get(f"/posts/{post['pk']}")).json()
    assert stored == {**post, "body": f"fixed by an admin #{tag}", "version": 2}
    assert await next_event(socket) == event("update", post["pk"], stored, "watch")

    # The author's own next edit follows on from the admin's version.
    reply = await writer.ask(
        {"action": "patch", "pk": post["pk"], "data": {"body": f"again #{tag}"}, "request_id": 1}
    )
    assert reply["data"]["version"] == 3
    assert (await next_event(socket))["data"]["version"] == 3


async def test_admin_edit_that_adds_a_tag_is_a_create_for_that_tag(live: Stack) -> None:
    boss, author, watcher = (
        await admin_user(live, live.server), await live.user(), await live.user(),
    )  # fmt: skip
    old, new = unique("old"), unique("new")
    socket = await live.connect(watcher)
    await subscribe(socket, new, "new")
    post = await create(await live.connect(author), f"only #{old}")
    async with admin_session(live, boss.username) as client:
        await edit_post(client, post["pk"], f"#{old} and now #{new}")
    expected = {**post, "body": f"#{old} and now #{new}", "version": 2}
    assert await next_event(socket) == event("create", post["pk"], expected, "new")
    # And one that drops it again is a delete for that tag's subscriber.
    async with admin_session(live, boss.username) as client:
        await edit_post(client, post["pk"], f"back to #{old}")
    assert await next_event(socket) == event("delete", post["pk"], {"pk": post["pk"]}, "new")


async def test_admin_delete_is_a_delete(live: Stack) -> None:
    boss, author, watcher = (
        await admin_user(live, live.server), await live.user(), await live.user(),
    )  # fmt: skip
    tag = unique("adm")
    socket = await live.connect(watcher)
    await subscribe(socket, tag, "watch")
    post = await create(await live.connect(author), f"doomed #{tag}")
    assert (await next_event(socket))["action"] == "create"
    async with admin_session(live, boss.username) as client:
        await delete_post(client, post["pk"])
        again = await client.delete("/admin/post/delete", params={"pks": str(post["pk"])})
    assert await next_event(socket) == event("delete", post["pk"], {"pk": post["pk"]}, "watch")
    assert "error=" in again.text  # gone: sqladmin reports it on the list page
    async with live.http() as http:
        assert (await http.get(f"/posts/{post['pk']}")).status_code == 404


async def test_an_invalid_edit_is_refused_in_words_and_changes_nothing(live: Stack) -> None:
    boss, author = await admin_user(live, live.server), await live.user()
    post = await create(await live.connect(author), unique("kept"))
    async with admin_session(live, boss.username) as client:
        blank = await client.post(
            f"/admin/post/edit/{post['pk']}", data={"body": "   ", "save": "Save"}
        )
        long = await client.post(
            f"/admin/post/edit/{post['pk']}", data={"body": "x" * 257, "save": "Save"}
        )
    assert blank.status_code == 400 and "This field may not be blank." in blank.text
    assert long.status_code == 400
    async with live.http() as http:
        assert (await http.get(f"/posts/{post['pk']}")).json() == post


# --- deactivating a user -------------------------------------------------------------------


async def test_deactivating_refuses_tokens_and_closes_sockets_and_streams(live: Stack) -> None:
    boss, victim, bystander = (
        await admin_user(live, live.server), await live.user(), await live.user(),
    )  # fmt: skip
    tag = unique("adm")
    sockets = [await live.connect(victim), await live.connect(victim)]
    anonymous = await live.connect()
    signed_in_later = await live.connect()  # becomes the victim in band
    reply = await signed_in_later.ask({"action": "authenticate", "token": victim.token})
    assert reply["response_status"] == 200
    other = await live.connect(bystander)
    for socket in (*sockets, other):
        await subscribe(socket, tag, "watch")
    async with (
        live.http() as http,
        http.stream("GET", f"/hashtags/{tag}/events", params={"token": victim.token}) as stream,
    ):
        lines = stream.aiter_lines()
        assert await anext(lines) == ": subscribed"
        async with admin_session(live, boss.username) as client:
            await deactivate(client, victim.id)
        for socket in (*sockets, signed_in_later):
            assert await socket.close_code() == 1008
        async with asyncio.timeout(TIMEOUT):
            rest = [line async for line in lines]  # the stream ends
        assert not any(line.startswith("event:") for line in rest)

        # From now on the token is refused everywhere, with the invalid token's answers.
        refused = await http.post("/posts", json={"body": "still here?"}, headers=victim.headers)
        assert (refused.status_code, refused.json()) == (401, {"detail": "Invalid token."})
        again = await http.get(f"/hashtags/{tag}/events", params={"token": victim.token})
        assert (again.status_code, again.json()) == (401, {"detail": "Invalid token."})
        token = await http.post(
            "/auth/token", data={"username": victim.username, "password": PASSWORD}
        )
        assert token.status_code == 401
    reply = await anonymous.ask({"action": "authenticate", "token": victim.token, "request_id": 1})
    assert reply["response_status"] == 401 and reply["errors"] == ["Invalid token."]
    with pytest.raises(Exception, match="403"):
        await live.connect(victim)
    # Nobody else was touched.
    post = await create(other, f"still live #{tag}")
    assert await next_event(other) == event("create", post["pk"], post, "watch")

    # Ticking the box again lets them back in.
    async with admin_session(live, boss.username) as client:
        response = await client.post(
            f"/admin/user/edit/{victim.id}", data={"is_active": "y", "save": "Save"}
        )
        assert response.status_code == 302
    await live.connect(victim)


async def test_deleting_a_user_deletes_their_posts_through_the_write_path(live: Stack) -> None:
    boss, victim, watcher = (
        await admin_user(live, live.server), await live.user(), await live.user(),
    )  # fmt: skip
    tag = unique("adm")
    socket = await live.connect(watcher)
    await subscribe(socket, tag, "watch")
    writer = await live.connect(victim)
    posts = [await create(writer, f"{n} #{tag}") for n in range(2)]
    for post in posts:
        assert (await next_event(socket))["pk"] == post["pk"]
    async with admin_session(live, boss.username) as client:
        response = await client.delete("/admin/user/delete", params={"pks": str(victim.id)})
        assert response.status_code == 200 and "error" not in response.text
    assert await writer.close_code() == 1008
    deleted = {(await next_event(socket))["pk"] for _ in posts}
    assert deleted == {post["pk"] for post in posts}
    async with live.http() as http:
        token = await http.post(
            "/auth/token", data={"username": victim.username, "password": PASSWORD}
        )
    assert token.status_code == 401
