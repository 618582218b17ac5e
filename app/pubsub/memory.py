"""In-process broker: the embedded default, for a single worker."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from app.pubsub.broker import Broker, MessageHandler

log = logging.getLogger(__name__)


class MemoryBroker(Broker):
    def __init__(self) -> None:
        self._handler: MessageHandler | None = None
        self._channels: set[str] = set()

    async def start(self, handler: MessageHandler, standing: Iterable[str] = ()) -> None:
        self._handler = handler
        self._channels.update(standing)

    async def close(self) -> None:
        self._handler = None
        self._channels.clear()

    async def publish(self, channel: str, data: bytes) -> None:
        handler = self._handler
        if handler is None or channel not in self._channels:
            return
        try:
            handler(channel, data)
        except Exception:
            # A delivery fault is the subscriber side's problem, never the writer's.
            log.exception("delivery of a message on %s failed", channel)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def ping(self) -> bool:
        return self._handler is not None

    @property
    def channels(self) -> frozenset[str]:
        """Channels with a subscription (for tests and diagnostics)."""
        return frozenset(self._channels)
