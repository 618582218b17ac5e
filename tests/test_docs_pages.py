"""`/docs` and `/redoc` work offline: every script, style and icon they load comes from the
app itself, and in a real Chromium with every other origin cut off they render the API."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Route, expect

from tests.browser_support import SETTLE, launch
from tests.support import Server, sqlite_server

pytestmark = pytest.mark.timeout(120)

PAGES = ["/docs", "/redoc"]
# What each kind of asset must be served as for the browser to use it (nosniff is on).
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}
# src="…", href="…", and the spec URL Swagger UI's inline script or ReDoc's tag names.
# ReDoc's bundle puts a "powered by" logo from its CDN in the sidebar; the policy blocks it
# and the bundle hides the image when it fails to load (as it would offline anyway).
BADGE = "https://cdn.redoc.ly/redoc/logo-mini.svg"
_REFERENCES = re.compile(r"""(?:src|href|spec-url)="([^"]+)"|url: '([^']+)'""")


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with sqlite_server(tmp_path_factory.mktemp("docs")) as running:
        yield running


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async for launched in launch():
        yield launched


def base_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def references(html: str) -> list[str]:
    return [src or url for src, url in _REFERENCES.findall(html)]


@pytest.mark.parametrize("path", PAGES)
async def test_the_page_loads_only_same_origin_assets_and_they_are_served(
    server: Server, path: str
) -> None:
    async with httpx.AsyncClient(base_url=base_url(server)) as http:
        page = await http.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "//" not in re.sub(r"<!--.*?-->", "", page.text), page.text  # no absolute URL
        found = references(page.text)
        suffixes = {"." + reference.rsplit(".", 1)[-1] for reference in found}
        # The page's script, its icon, the OpenAPI schema, and Swagger UI's stylesheet.
        assert {".js", ".png", ".json"} <= suffixes <= set(CONTENT_TYPES), found
        for reference in found:
            assert urlsplit(urljoin(base_url(server) + path, reference)).netloc == (
                f"127.0.0.1:{server.port}"
            ), reference
            asset = await http.get(reference)
            assert asset.status_code == 200, reference
            expected = CONTENT_TYPES["." + reference.rsplit(".", 1)[-1]]
            assert asset.headers["content-type"].split(";")[0] == expected, reference
            assert len(asset.content) > 1000, reference


@pytest.mark.parametrize("path", [*PAGES, "/docs/oauth2-redirect"])
async def test_the_docs_pages_have_their_own_same_origin_policy(server: Server, path: str) -> None:
    async with httpx.AsyncClient(base_url=base_url(server)) as http:
        page = await http.get(path)
        index = await http.get("/")
    assert page.status_code == 200
    directives = dict(
        d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";")
    )
    assert directives["default-src"] == "'none'"
    script_src = directives["script-src"].split()
    assert script_src[0] == "'self'" and "'unsafe-inline'" not in script_src
    # One hash per inline script (ReDoc's page has none).
    assert len(script_src) - 1 == page.text.count("<script>")
    assert all(source.startswith("'sha256-") for source in script_src[1:])
    assert directives["connect-src"] == "'self'"
    # The web client keeps its stricter policy.
    assert "'unsafe-inline'" not in index.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("path", "rendered"),
    [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")],
)
async def test_the_page_renders_in_a_browser_cut_off_from_other_origins(
    browser: Browser, server: Server, path: str, rendered: str
) -> None:
    context = await browser.new_context()
    elsewhere: list[str] = []
    console: list[str] = []
    own = base_url(server)

    async def only_this_server(route: Route) -> None:
        if route.request.url.startswith(own + "/"):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_this_server)
    page = await context.new_page()
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        await page.goto(own + path)
        title = page.locator(rendered).first
        await expect(title).to_contain_text("livepost", timeout=SETTLE * 1000)
        # The REST endpoints are listed, from the schema the page fetched from this server.
        endpoint = page.get_by_text("/posts/{pk}").first
        await expect(endpoint).to_be_visible(timeout=SETTLE * 1000)
    finally:
        await context.close()
    assert elsewhere == []
    problems = [line for line in console if line.startswith(("error", "pageerror"))]
    assert [line for line in problems if BADGE not in line] == [], console
