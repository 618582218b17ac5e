"""A WebSocket client on a bare socket, for clients that misbehave on purpose.

websockets' own client reads the socket eagerly into its buffers and answers pings by
itself, so it can neither "never read" nor "never answer a ping". This one does only what
the test asks: it reads only when a test awaits a frame and never sends a pong.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
from typing import Any

from bench.wsclient import encode_frame  # masked client frames, as RFC 6455 requires

TIMEOUT = 10.0
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class ConnectionClosed(Exception):
    """The server ended the TCP connection (FIN or reset)."""


class RawWebSocket:
    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock = sock
        self._pending = pending
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(
        cls, port: int, query: str = "", *, receive_buffer: int | None = None
    ) -> RawWebSocket:
        """Open /ws and complete the opening handshake; receive_buffer sets SO_RCVBUF (before
        connecting, so the advertised TCP window stays that small)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        loop = asyncio.get_running_loop()
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\n\r\n"
        ).encode()
        try:
            async with asyncio.timeout(TIMEOUT):
                await loop.sock_connect(sock, ("127.0.0.1", port))
                await loop.sock_sendall(sock, request)
                response = b""
                while b"\r\n\r\n" not in response:
                    chunk = await loop.sock_recv(sock, 4096)
                    if not chunk:
                        raise ConnectionClosed(f"closed during the handshake: {response!r}")
                    response += chunk
        except BaseException:
            sock.close()
            raise
        head, _, rest = response.partition(b"\r\n\r\n")
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        if not head.startswith(b"HTTP/1.1 101 ") or accept not in head:
            sock.close()
            raise AssertionError(f"handshake refused: {head!r}")
        return cls(sock, rest)

    async def send_text(self, text: str) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self._loop.sock_sendall(self.sock, encode_frame(TEXT, text.encode()))

    async def send_json(self, message: Any) -> None:
        await self.send_text(json.dumps(message))

    async def send_close(self, code: int) -> None:
        """The client's half of the closing handshake."""
        async with asyncio.timeout(TIMEOUT):
            await self._loop.sock_sendall(self.sock, encode_frame(CLOSE, struct.pack("!H", code)))

    async def _read(self, size: int) -> bytes:
        while len(self._pending) < size:
            try:
                chunk = await self._loop.sock_recv(self.sock, 65536)
            except (ConnectionResetError, BrokenPipeError) as error:
                raise ConnectionClosed(repr(error)) from error
            if not chunk:
                raise ConnectionClosed("EOF")
            self._pending += chunk
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    async def recv_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:  # noqa: ASYNC109
        """The next frame as (opcode, payload). Pings are returned, never answered."""
        async with asyncio.timeout(timeout):
            first, second = await self._read(2)
            if not first & 0x80:
                raise AssertionError("the server sent a fragmented frame")
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self._read(8))
            if second & 0x80:
                raise AssertionError("the server sent a masked frame")
            return first & 0x0F, await self._read(length)

    async def recv_json(self, timeout: float = TIMEOUT) -> Any:  # noqa: ASYNC109
        """The next text frame, parsed; control frames before it are skipped (unanswered)."""
        async with asyncio.timeout(timeout):
            while True:
                opcode, payload = await self.recv_frame(timeout)
                if opcode == TEXT:
                    return json.loads(payload)
                if opcode == CLOSE:
                    raise ConnectionClosed(f"close frame {close_code(payload)}")

    async def read_to_end(self, timeout: float = TIMEOUT) -> tuple[list[Any], int | None]:  # noqa: ASYNC109
        """Read until the server ends the connection: (text frames parsed, close code or None
        when the connection ended without a close frame)."""
        frames: list[Any] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    opcode, payload = await self.recv_frame(timeout)
                except ConnectionClosed:
                    return frames, None
                if opcode == TEXT:
                    frames.append(json.loads(payload))
                elif opcode == CLOSE:
                    return frames, close_code(payload)

    def close(self) -> None:
        self.sock.close()


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
