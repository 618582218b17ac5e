"""The /ws endpoint: admit the handshake, then read frames and write frames.

The task that accepted the socket reads and answers requests in order. Frames go straight to
the socket (livepost's protocol, app/transport/wsprotocol.py) or through a writer task (any
other server). When the client leaves, or something asks the connection to close (overflow,
flood, oversized frame, worker shutdown), reading stops and the subscriptions are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from app.accounts.service import Identity
from app.db import is_unavailable
from app.logs import access_log, bind_log_fields, disconnect_close, new_id
from app.protocol.admission import Ticket
from app.protocol.outgoing import Outgoing
from app.protocol.session import Session
from app.runtime import Runtime
from app.transport.wsprotocol import EXTENSION, LiveSocketProtocol, text_frame

log = logging.getLogger(__name__)

PATH = "/ws"
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008  # before accept, uvicorn turns any close into HTTP 403
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
WORKER_ID = str(os.getpid()).encode()
# How long the ASGI path waits for a client that fell behind to read down to its 1013 close
# frame (uvicorn's own closing handshake timeout).
SLOW_CLIENT_CLOSE_WAIT = 10.0


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


class LivePostsEndpoint:
    """/ws as a bare ASGI app, reached before FastAPI's router and middleware.

    A subscribed socket lives for hours and receives every event through `send`: skipping
    the routing, dependency and middleware layers saves their frames' memory on every idle
    connection and their wrappers' time on every event. The endpoint does its own logging
    (connection id, connect and close lines) in exchange.
    """

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = self._app.state.runtime
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        bind_log_fields(connection_id=new_id(), path=scope["path"], client=ip)
        admitted = await self._handshake(WebSocket(scope, receive, send), runtime)
        if admitted is _REFUSED:
            return
        identity = admitted
        socket = (scope.get("extensions") or {}).get(EXTENSION)
        connection = LiveConnection(receive, send, runtime, identity, socket)
        ticket = runtime.admission.admit(
            ip, identity.user_id if identity else None, connection.going_away, connection.revoked
        )
        if ticket is None:
            websocket = WebSocket(scope, receive, send)
            if runtime.admission.closing:
                # Stopping: not the client's fault, and another worker (or this one after its
                # restart) will take it, so a 503 its retry logic understands, not a 403.
                access_log.info("websocket refused: worker stopping")
                await websocket.send_denial_response(
                    JSONResponse({"detail": "Server is stopping, try again."}, 503)
                )
                return
            await _refuse(websocket, "connection limit")  # too many from this address or user
            return
        started = time.perf_counter()
        try:
            # ASGI: take the connect message, then accept. The header says which worker
            # answered: it lets operators (and tests) see the balancer spread connections.
            await receive()
            await send({"type": "websocket.accept", "headers": [(b"x-livepost-worker", WORKER_ID)]})
            access_log.info("websocket connected")
            await connection.run(ticket)
        finally:
            runtime.admission.release(ticket)
            access_log.info(
                "websocket closed (%s)",
                connection.close_code,
                extra={
                    "close_code": connection.close_code,
                    "closed_by": connection.closed_by,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )

    async def _handshake(self, websocket: WebSocket, runtime: Runtime) -> Any:
        """The caller's identity (None: anonymous), or _REFUSED once the handshake is refused.

        A method of its own so that the request objects it parses (headers, query string) are
        not kept alive for the hours the connection may last."""
        if not _origin_allowed(websocket, runtime.settings.origins):
            await _refuse(websocket, "origin not allowed")
            return _REFUSED
        well_formed, token = _handshake_token(websocket)
        identity = None
        if token is not None:
            try:
                identity = await runtime.accounts.identify(token)
            except Exception as error:
                if not is_unavailable(error):
                    raise
                # Not a 403 (a bad token) nor a 500 (a bug): the client should come back.
                access_log.warning("websocket refused: database unavailable (%r)", error)
                await websocket.send_denial_response(
                    JSONResponse({"detail": "Service temporarily unavailable."}, 503)
                )
                return _REFUSED
        if not well_formed or (token is not None and identity is None):
            await _refuse(websocket, "bad token")
            return _REFUSED
        bind_log_fields(user_id=identity.user_id if identity else None)
        return identity


_REFUSED: Any = object()


async def _refuse(websocket: WebSocket, reason: str) -> None:
    access_log.info("websocket rejected (%s)", reason, extra={"close_code": CLOSE_POLICY_VIOLATION})
    await websocket.close(code=CLOSE_POLICY_VIOLATION)  # before accept: HTTP 403


class LiveConnection:
    """One accepted socket, served by the ASGI task that accepted it: it reads and answers
    requests in order, and `close` (overflow, flood, oversized frame, shutdown) interrupts it.

    Under livepost's own protocol (`socket` given) frames are written to the socket as they
    come, and a writer task exists only while some wait for the socket to drain; under any
    other ASGI server a writer task sends every frame through `send`. Under livepost's protocol
    an idle connection is thus one task: tasks and their frames are much of what it costs."""

    def __init__(
        self,
        receive: Receive,
        send: Send,
        runtime: Runtime,
        identity: Identity | None,
        socket: LiveSocketProtocol | None = None,
    ) -> None:
        self._receive = receive
        self._send = send
        self.runtime = runtime
        self.identity = identity
        self.close_code: int | None = None
        self.closed_by: str | None = None
        self._socket = socket
        self._writer: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[Any] | None = None  # the task to interrupt, while reading
        self._stop = False
        self._session: Session | None = None
        self._finisher: asyncio.Task[None] | None = None
        limit = runtime.settings.ws_queue_size
        if socket is None:
            self.outgoing = Outgoing(limit, self._overflow)
        else:
            self.outgoing = Outgoing(
                limit, self._overflow, write_now=self._write_now, on_queued=self._start_flush
            )

    def _overflow(self) -> None:
        self.close(CLOSE_TRY_AGAIN_LATER)

    def close(self, code: int) -> None:
        """Ask the connection to end with this close code (the first request wins)."""
        if self.close_code is None:
            self.close_code, self.closed_by = code, "server"
        if code == CLOSE_GOING_AWAY and self._session is not None and not self._stop:
            if self._finisher is not None:
                return
            # The worker is stopping: the request in progress completes first.
            self._finisher = asyncio.get_running_loop().create_task(self._finish(self._session))
            self._finisher.add_done_callback(self._stop_reading)
            return
        self._stop_reading()

    def going_away(self) -> None:
        """The worker is stopping."""
        self.close(CLOSE_GOING_AWAY)

    def revoked(self) -> None:
        """The connection's user was deactivated (docs/protocol.md, "Close codes")."""
        self.close(CLOSE_POLICY_VIOLATION)

    def _stop_reading(self, _task: object = None) -> None:
        if self._stop:
            return
        self._stop = True
        reading = self._reading
        # From inside the reading task the flag is enough: the loop checks it after each
        # request. From anywhere else, the task is waiting: interrupt that wait.
        if reading is not None and reading is not asyncio.current_task():
            reading.cancel()

    async def run(self, ticket: Ticket) -> None:
        runtime = self.runtime
        session = self._session = Session(
            runtime.posts,
            runtime.accounts,
            runtime.hub,
            runtime.changelog,
            self.outgoing,
            self.identity,
            settings=runtime.settings,
            ticket=ticket,
            close_connection=self.close,
        )
        if self._socket is None:
            self._writer = asyncio.create_task(self._write())
            self._writer.add_done_callback(self._stop_reading)  # the socket went away
        try:
            await self._read(session)
        finally:
            session.close()
            self.outgoing.close()  # a writer sends what is queued, then ends
            if self._writer is not None:
                if self.close_code == CLOSE_GOING_AWAY:
                    with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                        async with asyncio.timeout(1.0):
                            await asyncio.shield(self._writer)
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._writer
        if self.closed_by == "server" and self.close_code is not None:
            # Under livepost's protocol the close frame goes out at once, behind what the socket
            # holds; through ASGI it waits for the socket to drain, which a client that stopped
            # reading may never let happen: don't wait on that for long.
            wait = 1.0
            if self.close_code == CLOSE_TRY_AGAIN_LATER:
                log.warning("closed a connection that stopped reading (outgoing queue full)")
                wait = SLOW_CLIENT_CLOSE_WAIT  # this client is behind: give it time to learn why
            with contextlib.suppress(Exception):
                async with asyncio.timeout(wait):
                    await self._send({"type": "websocket.close", "code": self.close_code})

    async def _finish(self, session: Session) -> None:
        """The worker is stopping: let the request in progress complete and its reply go out."""
        grace = self.runtime.settings.shutdown_grace_seconds
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await session.wait_idle()

    async def _read(self, session: Session) -> None:
        """Read and answer requests until the client leaves or `close` stops the reading."""
        task = self._reading = asyncio.current_task()
        assert task is not None
        receive = self._receive
        try:
            # No local holds a message while the loop waits for the next: an idle connection
            # would keep its last one alive.
            while not self._stop and await self._answer(session, await receive()):
                pass
        except asyncio.CancelledError:
            if not self._stop:
                raise  # not ours: the server is cancelling the connection
            task.uncancel()  # ours, and handled: the cleanup's timeouts must work
        finally:
            self._reading = None
            self._stop = True

    async def _answer(self, session: Session, message: Message) -> bool:
        """Answer one message; False once the connection is to end."""
        if message["type"] == "websocket.disconnect":
            if self.close_code is None:
                self.close_code, self.closed_by = disconnect_close(message)
            return False
        limit = self.runtime.settings.ws_max_frame_bytes
        text, data = message.get("text"), message.get("bytes")
        size = len(data) if data is not None else _utf8_length(text, limit)
        if size > limit:
            self.close(CLOSE_TOO_BIG)
            return False
        await session.receive(text if isinstance(text, str) else None)
        return True

    def _write_now(self, frame: str) -> bool:
        assert self._socket is not None
        return self._socket.offer(text_frame(frame))

    def _start_flush(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Write what queued up while the socket's buffer was full, once it drains."""
        socket, outgoing = self._socket, self.outgoing
        assert socket is not None
        while True:
            await socket.writable.wait()
            frames = outgoing.take()
            if not frames:
                return
            socket.offer(b"".join([text_frame(frame) for frame in frames]))

    async def _write(self) -> None:
        send = self._send
        # A socket that went away raises OSError (uvicorn) or RuntimeError (a closed state).
        with contextlib.suppress(OSError, RuntimeError):
            while (frames := await self.outgoing.drain()) is not None:
                for frame in frames:
                    await send({"type": "websocket.send", "text": frame})


def _utf8_length(text: str | None, limit: int) -> int:
    if text is None:
        return 0
    # A character is at most 4 bytes: only a long text needs encoding to be measured.
    return len(text) if len(text) * 4 <= limit else len(text.encode("utf-8", "surrogatepass"))
