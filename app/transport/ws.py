"""The /ws endpoint: authenticate the handshake, then read frames and write frames.

One task reads and answers requests in order; one drains the outgoing queue to the socket.
When either ends, both end, and the connection's subscriptions are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from app.protocol.outgoing import Outgoing
from app.protocol.session import Session
from app.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter()

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


@router.websocket("/ws")
async def live_posts(websocket: WebSocket) -> None:
    """DCRF's live-post action protocol (see PROTOCOL.md)."""
    runtime: Runtime = websocket.app.state.runtime
    well_formed, token = _handshake_token(websocket)
    identity = None
    if token is not None:
        identity = await runtime.accounts.identify(token)
    if not well_formed or (token is not None and identity is None):
        await websocket.close(code=1008)  # before accept: the server answers HTTP 403
        return
    # Which worker answered: lets operators (and tests) see the balancer spread connections.
    await websocket.accept(headers=[(b"x-livepost-worker", WORKER_ID)])

    overflowed = asyncio.Event()
    outgoing = Outgoing(runtime.settings.ws_queue_size, overflowed.set)
    session = Session(runtime.posts, runtime.accounts, runtime.hub, outgoing, identity)
    reader = asyncio.create_task(_read(websocket, session))
    writer = asyncio.create_task(_write(websocket, outgoing))
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        session.close()
        outgoing.close()
        for task in (reader, writer):
            task.cancel()
        for task in (reader, writer):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if overflowed.is_set():
        log.warning("closed a connection that stopped reading (outgoing queue full)")
        with contextlib.suppress(Exception):
            await websocket.close(code=CLOSE_TRY_AGAIN_LATER)


async def _read(websocket: WebSocket, session: Session) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        await session.receive(text if isinstance(text, str) else None)


async def _write(websocket: WebSocket, outgoing: Outgoing) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while (frames := await outgoing.drain()) is not None:
            for frame in frames:
                await websocket.send_text(frame)
