"""`/docs` (Swagger UI) and `/redoc` with their scripts and styles served by the app itself.

FastAPI's default pages load them from a public CDN, so offline they stay blank. The files
come from the `fastapi-offline` package (pinned with hashes in the lock files): it ships the
upstream swagger-ui-dist and redoc bundles unchanged and is re-released as they move, so an
upgrade is a lock-file bump, with no minified JavaScript committed here. Only its files are
used; the pages are FastAPI's own, pointed at them (FastAPI's "Self-hosting JavaScript and CSS
for docs").

Each page gets a Content-Security-Policy of its own, looser than the web client's (Swagger UI
and ReDoc inject styles, ReDoc runs a worker from a blob) but still same-origin only: the
pages' one inline script is allowed by its hash, not by 'unsafe-inline'.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_PATH = "/docs-assets"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# Swagger UI's default validator badge would call validator.swagger.io.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def docs_policy(html: str) -> str:
    """Same origin only; the page's inline scripts by their hashes."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    ]
    return "; ".join(
        [
            "default-src 'none'",
            " ".join(["script-src 'self'", *hashes]),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "worker-src 'self' blob:",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = docs_policy(bytes(page.body).decode())
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


def router_for(app: FastAPI) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(DOCS_URL)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
                swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
                swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
            )
        )

    @router.get(OAUTH2_REDIRECT_URL)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _with_policy(get_swagger_ui_oauth2_redirect_html())

    @router.get(REDOC_URL)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
                with_google_fonts=False,  # fonts.googleapis.com: the page falls back to its own
            )
        )

    return router


def mount(app: FastAPI) -> None:
    """Serve the docs pages and their files; the app must be built with docs_url=None and
    redoc_url=None so FastAPI's CDN pages are not registered first."""
    app.include_router(router_for(app))
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")
