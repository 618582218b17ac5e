"""Graceful stop on SIGTERM, ahead of uvicorn's own.

uvicorn answers SIGTERM by failing every WebSocket with 1012 straight away. Before that
happens, livepost lets each connection finish the request it is handling, closes it with 1001
(going away) and lets committed writes publish; then it hands the signal to uvicorn, which
stops accepting, finishes HTTP requests and runs the lifespan shutdown (dropping the Redis
subscriptions with the broker connection).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from app.runtime import Runtime

log = logging.getLogger(__name__)


def install_graceful_stop(runtime: Runtime) -> Callable[[], None]:
    """Chain our SIGTERM handler in front of the current one; returns the undo."""
    loop = asyncio.get_running_loop()
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:  # pragma: no cover  (not the main thread)
        return lambda: None
    stopping: list[asyncio.Task[None]] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if stopping:  # a second SIGTERM: no more waiting
            _call(previous, signum, frame)
            return

        async def stop_then_hand_over() -> None:
            try:
                log.info("SIGTERM: closing %d connections with 1001", len(runtime.admission))
                await runtime.stop_serving()
            finally:
                _call(previous, signum, frame)

        stopping.append(loop.create_task(stop_then_hand_over()))

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # pragma: no cover  (not the main thread)
        return lambda: None

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return undo


def _call(handler: Any, signum: int, frame: FrameType | None) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
