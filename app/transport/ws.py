"""The /ws endpoint: admit the handshake, then read frames and write frames.

One task reads and answers requests in order; one drains the outgoing queue to the socket.
When either ends, or something asks the connection to close (overflow, flood, oversized
frame, worker shutdown), both end and the connection's subscriptions are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from app.accounts.service import Identity
from app.logs import bind_log_fields
from app.protocol.admission import Ticket
from app.protocol.outgoing import Outgoing
from app.protocol.session import Session
from app.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter()

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008  # before accept, uvicorn turns any close into HTTP 403
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
WORKER_ID = str(os.getpid()).encode()


def _handshake_token(websocket: WebSocket) -> tuple[bool, str | None]:
    """(well-formed, token) from ?token= or an Authorization: Bearer header."""
    token = websocket.query_params.get("token")
    if token:
        return True, token
    header = websocket.headers.get("authorization")
    if header is None:
        return True, None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False, None
    return True, value.strip()


def _origin_allowed(websocket: WebSocket, allowed: frozenset[str]) -> bool:
    """Cross-site WebSocket hijacking guard: a browser's Origin must be listed, or be this
    host when nothing is listed. Non-browser clients send no Origin and are let through."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    if allowed:
        return origin.rstrip("/") in allowed or "*" in allowed
    return urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower()


@router.websocket("/ws")
async def live_posts(websocket: WebSocket) -> None:
    """DCRF's live-post action protocol (see PROTOCOL.md)."""
    runtime: Runtime = websocket.app.state.runtime
    if not _origin_allowed(websocket, runtime.settings.origins):
        await websocket.close(code=CLOSE_POLICY_VIOLATION)
        return
    well_formed, token = _handshake_token(websocket)
    identity = None
    if token is not None:
        identity = await runtime.accounts.identify(token)
    if not well_formed or (token is not None and identity is None):
        await websocket.close(code=CLOSE_POLICY_VIOLATION)
        return
    # The connection's log lines (its id and connect/close lines come from app.logs) name the user.
    bind_log_fields(user_id=identity.user_id if identity else None)
    connection = LiveConnection(websocket, runtime, identity)
    ip = websocket.client.host if websocket.client else "unknown"
    ticket = runtime.admission.admit(
        ip, identity.user_id if identity else None, lambda: connection.close(CLOSE_GOING_AWAY)
    )
    if ticket is None:  # too many connections from this address or user, or stopping
        await websocket.close(code=CLOSE_POLICY_VIOLATION)
        return
    try:
        # Which worker answered: lets operators (and tests) see the balancer spread connections.
        await websocket.accept(headers=[(b"x-livepost-worker", WORKER_ID)])
        await connection.run(ticket)
    finally:
        runtime.admission.release(ticket)


class LiveConnection:
    def __init__(self, websocket: WebSocket, runtime: Runtime, identity: Identity | None) -> None:
        self.websocket = websocket
        self.runtime = runtime
        self.identity = identity
        self.close_code: int | None = None
        self._closing = asyncio.Event()
        self.outgoing = Outgoing(
            runtime.settings.ws_queue_size, lambda: self.close(CLOSE_TRY_AGAIN_LATER)
        )

    def close(self, code: int) -> None:
        """Ask the connection to end with this close code (the first request wins)."""
        if self.close_code is None:
            self.close_code = code
            self._closing.set()

    async def run(self, ticket: Ticket) -> None:
        runtime = self.runtime
        session = Session(
            runtime.posts,
            runtime.accounts,
            runtime.hub,
            self.outgoing,
            self.identity,
            settings=runtime.settings,
            ticket=ticket,
            close_connection=self.close,
        )
        reader = asyncio.create_task(self._read(session))
        writer = asyncio.create_task(self._write())
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({reader, writer, closing}, return_when=asyncio.FIRST_COMPLETED)
            if self.close_code == CLOSE_GOING_AWAY:
                await self._finish(session, reader, writer)
        finally:
            session.close()
            self.outgoing.close()
            for task in (reader, writer, closing):
                task.cancel()
            for task in (reader, writer, closing):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.close_code is not None:
            if self.close_code == CLOSE_TRY_AGAIN_LATER:
                log.warning("closed a connection that stopped reading (outgoing queue full)")
            # A client that stopped reading may never take the close frame: don't wait on it.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.websocket.close(code=self.close_code)

    async def _finish(
        self, session: Session, reader: asyncio.Task[None], writer: asyncio.Task[None]
    ) -> None:
        """The worker is stopping: let the request in progress complete and its reply go out."""
        grace = self.runtime.settings.shutdown_grace_seconds
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await session.idle.wait()
        reader.cancel()
        self.outgoing.close()  # the writer sends what is queued, then ends
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            async with asyncio.timeout(1.0):
                await writer

    async def _read(self, session: Session) -> None:
        limit = self.runtime.settings.ws_max_frame_bytes
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            size = len(data) if data is not None else _utf8_length(text, limit)
            if size > limit:
                self.close(CLOSE_TOO_BIG)
                return
            await session.receive(text if isinstance(text, str) else None)

    async def _write(self) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            while (frames := await self.outgoing.drain()) is not None:
                for frame in frames:
                    await self.websocket.send_text(frame)


def _utf8_length(text: str | None, limit: int) -> int:
    if text is None:
        return 0
    # A character is at most 4 bytes: only a long text needs encoding to be measured.
    return len(text) if len(text) * 4 <= limit else len(text.encode("utf-8", "surrogatepass"))
