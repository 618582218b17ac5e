"""`/` serves the web client's page under a strict Content-Security-Policy; `/static` its files.

The page is plain static files (no build step, no CDN). The policy allows only this origin's
scripts and styles, nothing inline, and connections back to this host alone (fetch and /ws).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"
STATIC_PATH = "/static"

# A Host header that is only a host name or address and a port: anything else (a `;` would
# add a directive) is left out of the policy, and the page still works through 'self'.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")

_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Served from disk and small: let the browser revalidate, so a new version shows at once.
    "Cache-Control": "no-cache",
}


def content_security_policy(host: str | None) -> str:
    """The page's policy; the WebSocket origin is named too, since CSP2 browsers do not
    count ws: as 'self'."""
    connect = "'self'"
    if host and _HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {connect}",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def page_headers(host: str | None) -> dict[str, str]:
    return {
        **_COMMON_HEADERS,
        "Content-Security-Policy": content_security_policy(host),
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


class _StaticFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_COMMON_HEADERS)
        return response


router = APIRouter(include_in_schema=False)


@router.get("/")
async def index(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=page_headers(request.headers.get("host")))


def mount(app: FastAPI) -> None:
    """Serve the page at `/` and its files under /static."""
    app.include_router(router)
    app.mount(STATIC_PATH, _StaticFiles(directory=STATIC), name="static")
