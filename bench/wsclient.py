"""A lean WebSocket client (RFC 6455) on asyncio.Protocol, for the load generator.

websockets' client spends tens of microseconds of Python per received message (a future, a
frame object, a message assembler). At tens of thousands of events/s on the same two cores as
the server, that would make the load generator the bottleneck and the measurement a
measurement of the client. This client parses every frame of one socket read in a single loop
and hands each text payload, as bytes, to a callback together with the arrival time of the
read. It never compresses, answers pings, and sends text frames only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_MAX_HEAD = 64 * 1024  # a handshake answer larger than this is not a WebSocket server

# (payload, arrival time in ns of time.monotonic_ns()) for every text or binary message.
MessageHandler = Callable[[bytes, int], None]


class HandshakeError(Exception):
    """The server refused or botched the opening handshake."""


@dataclass(frozen=True)
class Endpoint:
    """Where one connection goes and what it sends on the handshake (auth cookie, token)."""

    host: str
    port: int
    target: str  # path and query, e.g. /ws?token=...
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_url(cls, url: str, headers: tuple[tuple[str, str], ...] = ()) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None:
            raise ValueError(f"not a ws:// URL: {url}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or 80, target, headers)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.target}"


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (servers must refuse unmasked client frames)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    key = os.urandom(4)
    if not length:
        return header + key
    # XOR as one big integer: C speed, no per-byte Python loop.
    repeated = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return header + key + masked


class WsClient(asyncio.Protocol):
    """One client connection. Create it with connect(); messages go to on_message."""

    def __init__(self, endpoint: Endpoint, on_message: MessageHandler) -> None:
        self.endpoint = endpoint
        self.on_message = on_message
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None  # from the server's close frame, if any
        self._transport: asyncio.Transport | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._head = bytearray()
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._open = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        host = f"{self.endpoint.host}:{self.endpoint.port}"
        lines = [
            f"GET {self.endpoint.target} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Key: {self._key.decode()}",
            *(f"{name}: {value}" for name, value in self.endpoint.headers),
        ]
        self._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        if not self._open:
            self._head += data
            head, sep, rest = bytes(self._head).partition(b"\r\n\r\n")
            if not sep:
                if len(self._head) > _MAX_HEAD:
                    self._fail(HandshakeError("handshake answer too large"))
                return
            accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest())
            status = head.split(b"\r\n", 1)[0]
            if not status.startswith(b"HTTP/1.1 101") or accept not in head:
                self._fail(HandshakeError(status.decode("latin-1")))
                return
            self._open = True
            self._head.clear()
            if not self.opened.done():
                self.opened.set_result(None)
            if not rest:
                return
            data = rest
        self._buffer += data
        self._parse(time.monotonic_ns())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or HandshakeError("connection closed in handshake"))
        if not self.lost.done():
            self.lost.set_result(None)

    # -- frames -----------------------------------------------------------------------------
    def _parse(self, now: int) -> None:
        buf = self._buffer
        end = len(buf)
        pos = 0
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if second & 0x80:  # servers never mask; this is not a peer we can measure
                self._fail(HandshakeError("the server sent a masked frame"))
                return
            if end - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            self._frame(first & 0x0F, bool(first & 0x80), payload, now)
        del buf[:pos]

    def _frame(self, opcode: int, final: bool, payload: bytes, now: int) -> None:
        if opcode in (TEXT, BINARY, CONT):
            if not final:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments.clear()
            self.on_message(payload, now)
        elif opcode == PING:
            self._write(PONG, payload)
        elif opcode == CLOSE:
            if self.close_code is None:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                self._write(CLOSE, payload[:2])
            # The server closes TCP after the handshake (RFC 6455 7.1.1), so TIME_WAIT
            # lands on its side and thousands of client sockets do not exhaust local ports.

    def _write(self, opcode: int, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode_frame(opcode, payload))

    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    # -- API ----------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._open and not self.lost.done() and self.close_code is None

    def send_text(self, text: str | bytes) -> None:
        self._write(TEXT, text.encode() if isinstance(text, str) else text)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Close handshake, then wait (bounded) for the server to end TCP; abort after."""
        if self._transport is None or self.lost.done():
            return
        if self.close_code is None:
            self._write(CLOSE, struct.pack("!H", 1000))
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.lost)
        except TimeoutError:
            self._transport.abort()


async def connect(
    endpoint: Endpoint,
    on_message: MessageHandler,
    timeout: float = 30.0,  # noqa: ASYNC109
) -> WsClient:
    """Open a connection and complete the opening handshake within timeout seconds."""
    loop = asyncio.get_running_loop()
    client: WsClient | None = None

    def factory() -> WsClient:
        nonlocal client
        client = WsClient(endpoint, on_message)
        return client

    async with asyncio.timeout(timeout):
        try:
            await loop.create_connection(factory, endpoint.host, endpoint.port)
            assert client is not None
            await client.opened
        except BaseException:
            if client is not None and client._transport is not None:
                client._transport.abort()
            raise
    return client
