"""The admin in a real Chromium: an admin's edit, made through /admin's own form, appears
live on another person's page, highlighted like the author's own edit; and the admin's
screenshot (test-artifacts/admin.png).

SQLite and the in-process broker: no services needed beyond Chromium itself."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from tests.admin_support import admin_user
from tests.browser_support import LIVE, SETTLE, Person, launch, open_page, screenshot
from tests.conftest import GENEROUS_LIMITS
from tests.support import PASSWORD, Endpoint, Server, sqlite_server, unique

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async for launched in launch():
        yield launched


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with sqlite_server(tmp_path_factory.mktemp("admin-web"), **GENEROUS_LIMITS) as running:
        yield running


async def admin_page(browser: Browser, base: str, username: str) -> Page:
    """A browser context of its own, signed in at /admin through the sign-in form."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{base}/admin/login")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{base}/admin/", timeout=SETTLE * 1000)
    return page


async def test_an_admin_edit_appears_live(browser: Browser, server: Server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    endpoint = Endpoint(base)
    boss = await admin_user(endpoint, server)
    reader: Person = await open_page(browser, f"{base}/")
    admin: Page | None = None
    try:
        await reader.register()
        tag = unique("t")
        await reader.follow(tag)
        await reader.record_classes()
        marker = unique("m")
        author = await endpoint.user()
        async with endpoint.http() as http:
            created = await http.post(
                "/posts", json={"body": f"#{tag} typo {marker}"}, headers=author.headers
            )
        pk = created.json()["pk"]
        post = reader.post(marker)
        await expect(post).to_be_visible(timeout=LIVE * 1000)

        admin = await admin_page(browser, base, boss.username)
        cookies = {c["name"]: c for c in await admin.context.cookies()}
        session = cookies["livepost_admin"]
        assert session["httpOnly"] is True and session["sameSite"] == "Strict"
        assert session["path"] == "/admin"
        assert await admin.evaluate("document.cookie") == ""  # no script can read it

        # The list, searched for the post, then its edit form, as an admin would go.
        await admin.goto(f"{base}/admin/post/list?search={marker}")
        await expect(admin.locator("table tbody tr")).to_have_count(1)
        await admin.goto(f"{base}/admin/post/edit/{pk}")
        await admin.fill("textarea[name=body]", f"#{tag} fixed by an admin {marker}")
        await admin.click("input[type=submit][value=Save]")
        await expect(admin).to_have_url(f"{base}/admin/post/list", timeout=SETTLE * 1000)

        await expect(post.locator(".body")).to_have_text(
            f"#{tag} fixed by an admin {marker}", timeout=LIVE * 1000
        )
        assert "edited" in await reader.classes_given(str(pk))  # highlighted, as any edit

        await admin.goto(f"{base}/admin/post/list?search={marker}")
        await expect(admin.locator("table tbody")).to_contain_text("fixed by an admin")
        path = await screenshot(Person(admin), "admin")  # test-artifacts/admin.png
        assert path.stat().st_size > 0
        assert [line for line in reader.console if line.startswith("pageerror")] == []
    finally:
        await reader.page.context.close()
        if admin is not None:
            await admin.context.close()
