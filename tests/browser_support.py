"""Driving the web client in Debian's Chromium through Playwright, and what the tests read
off the page.

Browsers cannot be downloaded here (`playwright install` fails), so Playwright launches
/usr/bin/chromium (`apt-get install chromium`; .ci/run installs it). Without it the browser
tests skip, or fail under LIVEPOST_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from tests.support import PASSWORD, unique

CHROMIUM = Path(os.environ.get("LIVEPOST_CHROMIUM", "/usr/bin/chromium"))
REQUIRE = os.environ.get("LIVEPOST_REQUIRE_SERVICES") == "1"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# Without the background-networking flags Chromium keeps calling home on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIVE = 1.0  # seconds: a live event reaches another person's page within this
SETTLE = 10.0  # seconds: anything else the page does (sign in, reconnect, list)


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"the browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium"
    if REQUIRE:
        pytest.fail(message)
    pytest.skip(message)


async def launch() -> AsyncIterator[Browser]:
    """A headless Chromium for a module's tests."""
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Person:
    """One person at the page in a browser context of their own: the page, and what it
    said in the console or requested along the way."""

    page: Page
    username: str = field(default_factory=lambda: unique("u"))
    console: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    frames_sent: list[str] = field(default_factory=list)
    # Every frame of the page's sockets in order: ("sent" | "received", text).
    frames: list[tuple[str, str]] = field(default_factory=list)

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    def post(self, text: str) -> Locator:
        """The post whose body holds text, in the open view."""
        return self.page.locator("#posts article.post:not(.leaving)", has_text=text)

    async def wait_live(self) -> None:
        await expect(self.status).to_have_attribute("data-state", "online", timeout=SETTLE * 1000)

    async def register(self) -> None:
        await self._account("#register")

    async def sign_in(self, username: str) -> None:
        self.username = username
        await self._account("#sign-in")

    async def _account(self, button: str) -> None:
        await self.page.fill("#username", self.username)
        await self.page.fill("#password", PASSWORD)
        await self.page.click(button)
        await expect(self.page.locator("#me")).to_have_text(
            f"Signed in as {self.username}", timeout=SETTLE * 1000
        )
        await expect(self.status.locator(".text")).to_have_text("Live", timeout=SETTLE * 1000)

    async def follow(self, tag: str) -> None:
        await self.page.fill("#follow-tag", f"#{tag}")
        await self.page.click("#follow-form button[type=submit]")
        await expect(self.page.locator("#follow-list a", has_text=f"#{tag}")).to_have_count(
            1, timeout=SETTLE * 1000
        )

    async def write(self, body: str) -> None:
        await self.page.fill("#compose-body", body)
        await self.page.click("#compose-send")
        await expect(self.post(body)).to_have_count(1, timeout=SETTLE * 1000)

    async def record_classes(self) -> None:
        """From now on, note every class a post element is given (animations are brief)."""
        await self.page.evaluate(
            """() => {
                window.__postClasses = [];
                new MutationObserver((changes) => {
                    for (const change of changes) {
                        const posts = change.type === "childList"
                            ? [...change.addedNodes] : [change.target];
                        for (const post of posts) {
                            for (const name of post.classList ?? []) {
                                window.__postClasses.push([post.dataset.pk, name]);
                            }
                        }
                    }
                }).observe(document.getElementById("posts"), {
                    childList: true, subtree: true, attributes: true, attributeFilter: ["class"],
                });
            }"""
        )

    async def classes_given(self, pk: str) -> set[str]:
        pairs = await self.page.evaluate("() => window.__postClasses")
        return {name for post, name in pairs if post == pk}

    def resumes(self, request_id: str) -> list[tuple[int, int]]:
        """For each resubscription under request_id that carried `since`: (that since, the
        highest resume point, `safe` or else `offset`, the page had received for it by then)."""
        seen: int | None = None
        found = []
        for direction, text in self.frames:
            frame = json.loads(text)
            if frame.get("request_id") != request_id:
                continue
            if direction == "sent":
                if "since" in frame:
                    found.append((frame["since"], seen))
                continue
            holder = frame.get("data") if "response_status" in frame else frame
            if isinstance(holder, dict):
                point = holder.get("safe", holder.get("offset"))
                if isinstance(point, int) and (seen is None or point > seen):
                    seen = point
        return found

    def csp_violations(self) -> list[str]:
        return [line for line in self.console if "Content Security Policy" in line]


async def open_page(
    browser: Browser,
    url: str,
    *,
    prepare: Callable[[Page], Awaitable[None]] | None = None,
    **context_options: Any,
) -> Person:
    """A fresh browser context (its own sessionStorage) with the page open at url;
    prepare(page), when given, runs before the page loads."""
    context = await browser.new_context(**context_options)
    page = await context.new_page()
    if prepare is not None:
        await prepare(page)
    person = Person(page)
    page.on("console", lambda message: person.console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: person.console.append(f"pageerror: {error}"))
    page.on("request", lambda request: person.urls.append(request.url))

    def watch(socket: Any) -> None:
        person.urls.append(socket.url)

        def sent(payload: Any) -> None:
            person.frames_sent.append(str(payload))
            person.frames.append(("sent", str(payload)))

        socket.on("framesent", sent)
        socket.on("framereceived", lambda payload: person.frames.append(("received", str(payload))))

    page.on("websocket", watch)
    await page.goto(url)
    await person.wait_live()
    return person


async def screenshot(person: Person, name: str) -> Path:
    """Save the page as test-artifacts/<name>.png (ignored by git) and return the path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
    # Animations run to their end first: a post caught sliding in would look faded.
    await person.page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path


class WorkerWatch:
    """Which worker answered each of the page's WebSocket handshakes (the x-livepost-worker
    header, a pid), read through the Chrome DevTools protocol."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    async def __call__(self, page: Page) -> None:
        session = await page.context.new_cdp_session(page)
        session.on("Network.webSocketHandshakeResponseReceived", self._handshake)
        await session.send("Network.enable")

    def _handshake(self, params: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in params["response"]["headers"].items()}
        if "x-livepost-worker" in headers:
            self.pids.append(int(headers["x-livepost-worker"]))
