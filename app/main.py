"""The ASGI application: `create_app(settings)`; `app` exists only for `uvicorn app.main:app`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.types import ASGIApp, Receive, Scope, Send

from app import admin
from app.config import Settings
from app.db import is_unavailable
from app.logs import LogContextMiddleware, setup_logging
from app.pubsub.broker import BrokerUnavailable
from app.runtime import Runtime
from app.shutdown import install_graceful_stop
from app.transport import health, rest_auth, rest_posts, sse, ws
from app.web import docs, page

DESCRIPTION = """
Realtime posts over WebSocket (`/ws`, DCRF's action protocol) with REST mirrors of every action.
Every committed write is fanned out as create/update/delete events to subscribers of its hashtags.
"""


class _App(FastAPI):
    """FastAPI, with /ws served by its own bare ASGI endpoint (see transport/ws.py)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.live_posts = ws.LivePostsEndpoint(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == ws.PATH:
            await self.live_posts(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> ASGIApp:
        # Outermost, outside Starlette's error middleware: the 500 and 503 answers of
        # `_unavailable_or_error` carry the request id too and are logged with their status.
        return LogContextMiddleware(super().build_middleware_stack())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; its lifespan builds and closes the worker's runtime."""
    resolved = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(resolved)
        runtime = await Runtime.start(resolved, run_relay=True)
        app.state.runtime = runtime
        bind_admin(runtime)
        undo_signal = install_graceful_stop(runtime)
        try:
            yield
        finally:
            undo_signal()
            await runtime.close()

    app = _App(
        title="livepost",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by app/web/docs.py, with their assets, not from a CDN
        redoc_url=None,
    )
    # Outages by type, so ExceptionMiddleware answers them (the Exception handler runs in
    # ServerErrorMiddleware, which answers and then re-raises: a crash log for every 503).
    for outage in (DBAPIError, SQLAlchemyTimeoutError, OSError, TimeoutError, BrokerUnavailable):
        app.add_exception_handler(outage, _unavailable_or_error)
    app.add_exception_handler(Exception, _unavailable_or_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.include_router(rest_auth.router)
    app.include_router(rest_posts.router)
    app.include_router(sse.router)
    app.include_router(health.router)
    page.mount(app)  # the browser client at `/`
    docs.mount(app)  # /docs and /redoc
    bind_admin = admin.mount(app, resolved)  # /admin, bound to the runtime once it starts
    return app


async def _unavailable_or_error(_request: Request, error: Exception) -> JSONResponse:
    """A database or broker that cannot be reached is a 503; anything else a logged 500."""
    if is_unavailable(error) or isinstance(error, BrokerUnavailable):
        logging.getLogger(__name__).warning("service unavailable: %r", error)
        return JSONResponse({"detail": "Service temporarily unavailable."}, status_code=503)
    logging.getLogger(__name__).error("unhandled error", exc_info=error)
    return JSONResponse({"detail": "Internal server error."}, status_code=500)


async def _invalid_request(_request: Request, error: Exception) -> Response:
    """FastAPI's 422, written so that any input can be echoed: ASCII-escaped (a lone
    surrogate would fail UTF-8) and with NaN or Infinity echoed as text (not valid JSON)."""
    assert isinstance(error, RequestValidationError)
    detail = [
        {key: _echoable(value) if key == "input" else value for key, value in item.items()}
        for item in jsonable_encoder(error.errors())
    ]
    body = json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False, default=str)
    return Response(body, status_code=422, media_type="application/json")


def _echoable(value: object) -> object:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return repr(value)
    return value


app = create_app()
