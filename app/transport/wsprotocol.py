"""livepost's WebSocket protocol under uvicorn: uvicorn's sans-I/O one, leaner per socket, with
a way to write event frames straight to the transport.

Through ASGI every frame to every subscriber is a `send` call: a message dict, uvicorn's state
checks, the websockets encoder, and a task switch to the connection's writer. An event fanned
out to a thousand sockets is the same bytes a thousand times (server frames are not masked), so
the app encodes it once (`text_frame`) and hands it to each socket's `offer`, synchronously,
from the hub's fan-out: what the raw relay's `websockets.broadcast` does, minus the per-socket
encoding. The socket is exposed to the app as the scope extension `livepost.socket`; under any
other server the extension is absent and the app uses ASGI `send`.

It also keeps less per idle socket: a list and one future instead of an `asyncio.Queue` (three
deques and an Event's deque) and an `asyncio.Event` for flow control, and nothing of the
handshake once it is accepted.

Run it with `uvicorn --ws app.transport.wsprotocol:LiveSocketProtocol`; app/worker.py chooses it
for every livepost worker.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

EXTENSION = "livepost.socket"


class LiveSocketProtocol(WebSocketsSansIOProtocol):
    # uvicorn's per-connection attributes, as slots: more than 30 attributes defeat CPython's
    # shared-key instance dicts, so each socket would otherwise carry a 64-entry dict (~1.6 kB).
    # Its own assignments land in these slots; one it adds in a later version goes to a dict.
    __slots__ = (
        "app", "app_state", "asgi_version", "client", "close_sent", "close_timeout",
        "close_timer", "config", "conn", "connections", "curr_msg_data_type", "default_headers",
        "disconnected", "frames", "handshake_complete", "handshake_initiated",
        "initial_response", "last_ping_rtt", "logger", "loop", "pending_ping_payload",
        "ping_interval", "ping_sent_at", "ping_timeout", "ping_timer", "pong_timer", "queue",
        "read_paused", "request", "response", "root_path", "scheme", "scope", "server", "tasks",
        "transport", "writable",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn uses exactly put_nowait/get/empty and wait/set/clear/is_set of these.
        self.queue: Any = _Inbox()
        self.writable: Any = _Gate()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # a handshake that goes on to the app (else it was refused)
            scope["extensions"][EXTENSION] = self

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.close" and self._open():
            self._close(message.get("code", 1000), message.get("reason") or "")
            return
        await super().send(message)
        if message["type"] == "websocket.accept":
            # Nothing reads the handshake's request, response, headers or query string (which
            # may hold the token) again: an idle socket should not keep them (about 4 kB) for
            # the hours it stays open. The request's headers are emptied in place: websockets'
            # parser keeps the request.
            self.request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]
            self.scope["headers"] = []
            self.scope["query_string"] = b""

    def _open(self) -> bool:
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and not self.transport.is_closing()
        )

    def _close(self, code: int, reason: str) -> None:
        """Start the closing handshake at once, also while the transport asks to pause.

        uvicorn's own `send` first waits for the transport to drain, which a client that
        stopped reading never lets happen, so it would never learn why it was closed (1013).
        The close frame is small: it goes into the buffer behind the frames already there, and
        the client reads it after them. The handshake then has `close_timeout` (uvicorn's
        10 s) to complete; only after that is the connection aborted, its buffer dropped."""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        try:
            self.conn.send_close(code, reason)
        except InvalidState:  # the client's close came first: nothing more to say
            raise ClientDisconnected() from None
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:  # the client's close frame must be read
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def offer(self, data: bytes) -> bool:
        """Write pre-encoded frames now, or return False while the transport asked to pause
        (its buffer is past the high-water mark): the caller keeps them for later. Frames for a
        socket that is closing or gone are dropped."""
        if not self.writable.is_set():
            return False
        if self.handshake_complete and not self.close_sent and not self.transport.is_closing():
            self.transport.write(data)
        return True


def text_frame(text: str) -> bytes:
    """A complete, unmasked, uncompressed text frame (RFC 6455 5.2) for text.

    The hub hands the same string to every subscriber of an event, so the last encoding is
    kept and reused while the same string object comes back."""
    global _last_text, _last_frame
    if text is _last_text:
        return _last_frame
    payload = text.encode()
    length = len(payload)
    if length < 126:
        head = bytes((0x81, length))
    elif length < 65536:
        head = struct.pack("!BBH", 0x81, 126, length)
    else:
        head = struct.pack("!BBQ", 0x81, 127, length)
    _last_text, _last_frame = text, head + payload
    return _last_frame


_last_text: str | None = None
_last_frame = b""


class _Inbox:
    """The messages for the app's `receive`: one reader, and uvicorn pauses reading the socket
    while one is waiting, so a list is enough."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Gate:
    """Open unless the transport paused writing; its waiters exist only while it is shut."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = True
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> None:
        while not self._open:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
