"""The web client at `/`, driven in a real Chromium against a real server: what a person
sees when posts arrive, change and go, when something is refused, and when the network drops.

SQLite and the in-process broker: no services needed beyond Chromium itself."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect

from app.cli.cluster import Cluster
from tests.browser_support import (
    LIVE,
    SETTLE,
    Person,
    WorkerWatch,
    launch,
    open_page,
    screenshot,
)
from tests.cluster_support import running_cluster
from tests.conftest import GENEROUS_LIMITS
from tests.support import Endpoint, Server, sqlite_server, unique
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async for launched in launch():
        yield launched


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with sqlite_server(tmp_path_factory.mktemp("web"), **GENEROUS_LIMITS) as running:
        yield running


@pytest.fixture
def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}/"


@pytest.fixture
async def people(browser: Browser, url: str) -> AsyncIterator[list[Person]]:
    """Two people, each in a browser context of their own, both signed up and live."""
    opened = [await open_page(browser, url), await open_page(browser, url)]
    for person in opened:
        await person.register()
    yield opened
    for person in opened:
        await person.page.context.close()


async def pk_of(post: Any) -> str:
    return str(await post.get_attribute("data-pk"))


async def test_the_page_is_served_under_a_strict_content_security_policy(
    browser: Browser, server: Server, url: str
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"].split() == [
        "'self'",
        f"ws://127.0.0.1:{server.port}",
        f"wss://127.0.0.1:{server.port}",
    ]
    assert "unsafe" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"

    # The page runs under it: styled, scripted and connected, with no violation reported.
    visitor = await open_page(browser, url)
    try:
        await expect(visitor.status.locator(".text")).to_have_text("Live (read only)")
        await expect(visitor.page.locator("#account")).to_be_visible()
        background = await visitor.page.evaluate(
            "getComputedStyle(document.querySelector('.top')).position"
        )
        assert background == "sticky"  # app.css applied
        await visitor.register()
        await visitor.write(f"hello from {unique('csp')}")
        assert visitor.csp_violations() == []
        assert [line for line in visitor.console if line.startswith(("error", "pageerror"))] == []
    finally:
        await visitor.page.context.close()


async def test_no_token_in_any_url_the_page_builds(people: list[Person]) -> None:
    alice, _bob = people
    await alice.follow(unique("t"))
    await alice.write(f"a post {unique('m')}")
    token = await alice.page.evaluate(
        "JSON.parse(sessionStorage.getItem('livepost.session')).token"
    )
    assert token.count(".") == 2  # a JWT, kept in sessionStorage
    assert alice.urls, "the page made no requests"
    for requested in alice.urls:
        assert token not in requested and "token=" not in requested, requested
    # The socket signed in with the in-band action instead.
    assert any('"action":"authenticate"' in frame for frame in alice.frames_sent)


async def test_a_followed_hashtag_arrives_live_and_leaves_when_edited_away(
    people: list[Person],
) -> None:
    alice, bob = people
    await alice.follow("python")
    await alice.page.click("#follow-list a:text-is('#python')")
    await expect(alice.page.locator("#view-title")).to_have_text("#python")

    marker = unique("m")
    await bob.write(f"#Python is {marker}")
    arrived = alice.post(marker)
    await expect(arrived).to_be_visible(timeout=LIVE * 1000)
    await expect(arrived.locator("a.tag")).to_have_text("#Python")
    await screenshot(alice, "hashtag-view")

    # Bob edits the tag away: it leaves Alice's #python view...
    await bob.post(marker).locator("button.edit").click()
    await bob.post(marker).locator("textarea").fill(f"no tag any more, {marker}")
    await bob.post(marker).locator("button.save").click()
    await expect(bob.post(f"no tag any more, {marker}")).to_have_count(1)
    await expect(alice.post(marker)).to_have_count(0, timeout=SETTLE * 1000)
    # ...yet it still exists, so her newest posts show it as edited.
    await alice.page.click("#back")
    await expect(alice.page.locator("#view-title")).to_have_text("Newest posts")
    moved = alice.post(marker)
    await expect(moved.locator(".body")).to_have_text(f"no tag any more, {marker}")
    await expect(moved.locator(".edited-mark")).to_be_visible()
    await screenshot(alice, "feed")


async def test_an_edit_is_highlighted_and_a_deleted_post_fades_out(people: list[Person]) -> None:
    alice, bob = people
    tag = unique("t")
    await alice.follow(tag)
    await alice.record_classes()
    marker = unique("m")
    await bob.write(f"#{tag} first {marker}")
    post = alice.post(marker)
    await expect(post).to_be_visible(timeout=LIVE * 1000)
    pk = await pk_of(post)
    assert "entering" in await alice.classes_given(pk)  # it slid in

    await bob.post(marker).locator("button.edit").click()
    await bob.post(marker).locator("textarea").fill(f"#{tag} second {marker}")
    await bob.post(marker).locator("button.save").click()
    await expect(post.locator(".body")).to_have_text(f"#{tag} second {marker}", timeout=LIVE * 1000)
    assert "edited" in await alice.classes_given(pk)  # highlighted

    delete = bob.post(marker).locator("button.delete")
    await delete.click()
    await expect(delete).to_have_text("Really delete?")
    await delete.click()
    await expect(bob.post(marker)).to_have_count(0)
    gone = alice.page.locator(f"#posts [data-pk='{pk}']")
    await expect(gone).to_have_count(0, timeout=SETTLE * 1000)
    assert "leaving" in await alice.classes_given(pk)  # it faded out before it went


async def test_refusals_are_shown_in_words(
    browser: Browser, url: str, people: list[Person]
) -> None:
    alice, _bob = people
    await alice.page.fill("#compose-body", "x" * 300)
    await expect(alice.page.locator("#compose-count")).to_have_text("300/256")
    await alice.page.click("#compose-send")
    await expect(alice.page.locator("#compose-error")).to_have_text(
        "Post: Ensure this field has no more than 256 characters."
    )
    await alice.page.fill("#compose-body", "   ")
    await alice.page.click("#compose-send")
    await expect(alice.page.locator("#compose-error")).to_have_text(
        "Post: This field may not be blank."
    )

    await alice.page.fill("#follow-tag", "not a tag!")
    await alice.page.click("#follow-form button[type=submit]")
    await expect(alice.page.locator("#follow-error")).to_have_text(
        "Hashtag: Enter a valid hashtag."
    )

    # REST refusals on the sign-in form: a taken name, a wrong password.
    stranger = await open_page(browser, url)
    try:
        await stranger.page.fill("#username", alice.username)
        await stranger.page.fill("#password", "correct horse battery")
        await stranger.page.click("#register")
        await expect(stranger.page.locator("#account-error")).to_have_text(
            "Username already taken."
        )
        await stranger.page.fill("#password", "a wrong password")
        await stranger.page.click("#sign-in")
        await expect(stranger.page.locator("#account-error")).to_have_text(
            "Incorrect username or password."
        )
        await stranger.page.fill("#username", unique("u"))
        await stranger.page.fill("#password", "short")
        await stranger.page.click("#register")
        await expect(stranger.page.locator("#account-error")).to_contain_text(
            "Password: String should have at least 8 characters"
        )
    finally:
        await stranger.page.context.close()


async def test_after_a_network_drop_the_page_resumes_without_gaps_or_repeats(
    browser: Browser, server: Server
) -> None:
    """The page reaches the server through a proxy that the test cuts (RST, new connections
    refused); posts written meanwhile appear once the network is back, each exactly once."""
    proxy = TcpProxy("127.0.0.1", server.port)
    await proxy.start()
    reader = await open_page(browser, f"http://127.0.0.1:{proxy.port}/")
    try:
        await reader.register()
        tag = unique("t")
        await reader.follow(tag)
        direct = Endpoint(f"http://127.0.0.1:{server.port}")
        writer = await direct.user()
        async with direct.http() as http:

            async def write(method: str, path: str, body: str | None = None) -> Any:
                response = await http.request(
                    method, path, json=None if body is None else {"body": body},
                    headers=writer.headers,
                )  # fmt: skip
                assert response.status_code in (200, 201, 204), response.text
                return response.json() if response.status_code != 204 else None

            edited = await write("POST", "/posts", f"#{tag} before {unique('m')}")
            doomed = await write("POST", "/posts", f"#{tag} doomed {unique('m')}")
            for post in (edited, doomed):
                await expect(reader.post(post["body"])).to_have_count(1, timeout=LIVE * 1000)

            await proxy.stop()
            await expect(reader.status).to_have_attribute("data-state", "offline")
            await expect(reader.status).to_contain_text("Reconnecting in")
            missed = [
                await write("POST", "/posts", f"#{tag} while away {n} {unique('m')}")
                for n in range(3)
            ]
            changed = await write("PATCH", f"/posts/{edited['pk']}", f"#{tag} changed meanwhile")
            await write("DELETE", f"/posts/{doomed['pk']}")
            await proxy.start()

            await reader.wait_live()
            for post in missed:
                await expect(reader.post(post["body"])).to_have_count(1, timeout=SETTLE * 1000)
            await expect(reader.post(changed["body"])).to_have_count(1)
            gone = reader.page.locator("#posts article", has_text=doomed["body"])
            await expect(gone).to_have_count(0, timeout=SETTLE * 1000)  # faded out and removed
            # Every post the page shows, once: four of this tag's, nothing doubled.
            bodies = await reader.page.locator("#posts article.post .body").all_inner_texts()
            assert len(bodies) == len(set(bodies))
            assert sorted(b for b in bodies if f"#{tag}" in b) == sorted(
                [post["body"] for post in missed] + [changed["body"]]
            )
        # The resubscription asked for what it missed, from where it stopped: the highest
        # watermark it had received.
        resumes = reader.resumes("follow")
        assert resumes, reader.frames
        assert all(since == seen for since, seen in resumes), resumes
        await screenshot(reader, "after-reconnect")
    finally:
        await reader.page.context.close()
        if proxy.running:
            await proxy.stop()


async def test_the_page_fits_a_phone(browser: Browser, url: str, tmp_path: Path) -> None:
    phone = await open_page(
        browser, url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    try:
        await phone.register()
        await phone.write(f"from a phone #{unique('t')}")
        overflow = await phone.page.evaluate(
            "document.documentElement.scrollWidth > document.documentElement.clientWidth"
        )
        assert not overflow, "the page is wider than a phone's screen"
        await screenshot(phone, "phone")
    finally:
        await phone.page.context.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two workers on PostgreSQL and Redis behind nginx (skips without those services)."""
    with running_cluster(2, nginx=True, prefix=unique("lpw")) as deployment:
        yield deployment


async def test_a_killed_worker_costs_the_page_nothing(browser: Browser, cluster: Cluster) -> None:
    """Through nginx, the worker holding the page's socket is killed; the page reconnects to
    the other and shows every post written meanwhile, once."""
    watch = WorkerWatch()
    reader = await open_page(browser, cluster.lb_url + "/", prepare=watch)
    try:
        await reader.register()
        tag = unique("t")
        await reader.follow(tag)
        before = unique("before")
        await reader.write(f"#{tag} {before}")
        victim = [cluster.pid(i) for i in range(2)].index(watch.pids[-1])
        survivor = Endpoint(cluster.worker_urls[1 - victim])
        writer = await survivor.user()

        cluster.stop_worker(victim, signal.SIGKILL)
        async with survivor.http() as http:
            missed = []
            for n in range(3):
                body = f"#{tag} written meanwhile {n} {unique('m')}"
                response = await http.post("/posts", json={"body": body}, headers=writer.headers)
                assert response.status_code == 201, response.text
                missed.append(body)

        await reader.wait_live()
        for body in missed:
            await expect(reader.post(body)).to_have_count(1, timeout=SETTLE * 1000)
        await expect(reader.post(before)).to_have_count(1)
        bodies = await reader.page.locator("#posts article.post .body").all_inner_texts()
        assert len(bodies) == len(set(bodies)), bodies
        assert watch.pids[-1] == cluster.pid(1 - victim)  # it is the other worker now
        assert any('"since"' in frame and tag in frame for frame in reader.frames_sent)
        await screenshot(reader, "after-worker-killed")
    finally:
        await reader.page.context.close()
        cluster.start_worker(victim)


async def test_throttling_and_the_flood_close_are_shown_in_words(
    browser: Browser, tmp_path: Path
) -> None:
    """A server that allows each socket four requests: signing in and listing take two, two
    posts go through, the next is refused with 429, and the one after that closes the
    socket (1008); the page says so, then reconnects."""
    async with sqlite_server(
        tmp_path, ws_rate_per_second=0.001, ws_rate_burst=4, ws_flood_close_after=2
    ) as limited:
        person = await open_page(browser, f"http://127.0.0.1:{limited.port}/")
        try:
            await person.register()
            await person.write(f"one {unique('m')}")
            await person.write(f"two {unique('m')}")
            await person.page.fill("#compose-body", "three")
            await person.page.click("#compose-send")
            await expect(person.page.locator("#compose-error")).to_have_text(
                "Too many requests: slow down and try again in a moment."
            )
            await person.page.click("#compose-send")
            await expect(person.page.locator("#notice")).to_contain_text(
                "The server closed the connection: too many requests, or this page may not "
                "connect. Reconnecting…"
            )
            await person.wait_live()  # a new socket, a new allowance
        finally:
            await person.page.context.close()


async def test_load_older_pages_back_with_before(
    browser: Browser, server: Server, url: str
) -> None:
    direct = Endpoint(f"http://127.0.0.1:{server.port}")
    writer = await direct.user()
    marker = unique("page")
    async with direct.http() as http:
        for n in range(51):  # one more than the page's first listing holds
            response = await http.post(
                "/posts", json={"body": f"{marker} {n:02d}"}, headers=writer.headers
            )
            assert response.status_code == 201
    visitor = await open_page(browser, url)
    try:
        await expect(visitor.post(f"{marker} 50")).to_have_count(1, timeout=SETTLE * 1000)
        await expect(visitor.post(f"{marker} 00")).to_have_count(0)
        await visitor.page.click("#older")
        await expect(visitor.post(f"{marker} 00")).to_have_count(1, timeout=SETTLE * 1000)
        mine = visitor.page.locator("#posts article.post .body", has_text=marker)
        bodies = await mine.all_inner_texts()
        assert bodies == [f"{marker} {n:02d}" for n in reversed(range(51))]
        assert any('"before"' in frame for frame in visitor.frames_sent)
    finally:
        await visitor.page.context.close()


async def test_the_client_keeps_the_newest_version_and_resumes_from_safe(
    browser: Browser, url: str
) -> None:
    """The page's own modules, run in the browser: the resume point is `safe` when the server
    sends it and `offset` otherwise; a post is never replaced by an older version, nor
    brought back once deleted."""
    visitor = await open_page(browser, url)
    try:
        result = await visitor.page.evaluate(
            """async () => {
                const { resumePoint, Subscription } = await import("/static/connection.js");
                const { PostStore } = await import("/static/store.js");
                const subscription = new Subscription("follow");
                for (const frame of [{ offset: 7 }, { offset: 9, safe: 4 }, { offset: 3 }]) {
                    subscription.see(frame);
                }
                const store = new PostStore();
                const post = (version) => ({ pk: 1, body: `v${version}`, version });
                const taken = [post(2), post(1), post(2), post(3)].map((p) => store.accept(p));
                store.forget(1);
                return {
                    points: [resumePoint({ offset: 5 }), resumePoint({ offset: 5, safe: 3 })],
                    safe: subscription.safe,
                    taken,
                    revived: store.accept(post(4)),
                };
            }"""
        )
        assert result == {
            "points": [5, 3],
            "safe": 7,
            "taken": [True, False, False, True],
            "revived": False,
        }
    finally:
        await visitor.page.context.close()


async def test_deleting_a_post_already_gone_says_so(browser: Browser, url: str) -> None:
    """The same person in two tabs: one deletes a post; the other, which does not follow its
    hashtag and so still shows it, tries to delete it too and is told why that failed."""
    first = await open_page(browser, url)
    second = await open_page(browser, url)
    try:
        await first.register()
        marker = unique("m")
        await first.write(f"twice {marker}")
        await second.sign_in(first.username)
        await expect(second.post(marker)).to_have_count(1, timeout=SETTLE * 1000)
        for person in (first, second):
            delete = person.post(marker).locator("button.delete")
            await delete.click()
            await delete.click()
            await expect(person.post(marker)).to_have_count(0, timeout=SETTLE * 1000)
        await expect(second.page.locator("#notice-text")).to_have_text(
            "That post no longer exists, or it is not yours."
        )
    finally:
        await first.page.context.close()
        await second.page.context.close()


async def test_a_page_from_another_origin_cannot_open_the_socket(
    browser: Browser, server: Server, url: str
) -> None:
    """The Origin check still guards /ws: a page served from another port of this host is
    refused (the server logs "origin not allowed"), while the app's own page connects."""

    async def bare_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"<!doctype html><p>elsewhere</p>"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    elsewhere = await asyncio.start_server(bare_page, "127.0.0.1", 0)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        opens = """(url) => new Promise((resolve) => {
            const socket = new WebSocket(url);
            socket.onopen = () => { socket.close(); resolve(true); };
            socket.onerror = () => resolve(false);
        })"""
        socket_url = f"ws://127.0.0.1:{server.port}/ws"
        await page.goto(f"http://127.0.0.1:{elsewhere.sockets[0].getsockname()[1]}/")
        assert await page.evaluate(opens, socket_url) is False
        await page.goto(url)
        assert await page.evaluate(opens, socket_url) is True
    finally:
        await context.close()
        elsewhere.close()
        await elsewhere.wait_closed()
