"""A connection's bounded outgoing queue, and the hold that puts a reply before its events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Outgoing:
    """Frames waiting for the socket. Overflow means the client is not reading: the queue
    calls on_overflow once and drops further frames, so memory stays bounded.

    Every event of every subscriber passes through here, and an idle socket keeps one for
    hours: a plain list swapped out whole, and a future that exists only while the writer
    waits, cost less time and memory than a deque and an asyncio.Event.

    With `write_now`, a frame goes straight to the socket when nothing is queued before it
    (`write_now` returns False when the socket cannot take it yet); only what must wait is
    queued, and `on_queued` is told when the queue stops being empty, so a writer task needs
    to exist only then. Without it, a writer waits in `drain` for every frame."""

    __slots__ = (
        "_closed", "_frames", "_held", "_limit", "_on_overflow", "_on_queued", "_waiter",
        "_write_now",
    )  # fmt: skip

    def __init__(
        self,
        limit: int,
        on_overflow: Callable[[], None],
        *,
        write_now: Callable[[str], bool] | None = None,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self._frames: list[str] = []
        self._held: list[str] | None = None
        self._limit = limit
        self._on_overflow = on_overflow
        self._write_now = write_now
        self._on_queued = on_queued
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def put_reply(self, frame: str) -> None:
        self._push(frame)

    def put_event(self, frame: str) -> None:
        """Events raised while a request is in progress wait for its reply."""
        if self._held is not None:
            if len(self._held) + len(self._frames) >= self._limit:
                self._overflow()
                return
            self._held.append(frame)
            return
        self._push(frame)

    def hold(self) -> None:
        self._held = []

    def release(self) -> None:
        held, self._held = self._held, None
        for frame in held or ():
            self._push(frame)

    def _push(self, frame: str) -> None:
        if self._closed:
            return
        frames = self._frames
        if not frames and self._write_now is not None and self._write_now(frame):
            return
        if len(frames) >= self._limit:
            self._overflow()
            return
        frames.append(frame)
        if self._waiter is not None:
            self._wake()
        elif len(frames) == 1 and self._on_queued is not None:
            self._on_queued()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _overflow(self) -> None:
        if not self._closed:
            self._closed = True
            self._frames = []
            self._wake()
            self._on_overflow()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def take(self) -> list[str]:
        """Everything queued, without waiting."""
        frames, self._frames = self._frames, []
        return frames

    async def drain(self) -> list[str] | None:
        """Everything queued, waiting for at least one frame; None once closed and empty
        (a queue closed in order still hands out what it holds, e.g. a last reply)."""
        while not self._frames:
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        frames, self._frames = self._frames, []
        return frames
