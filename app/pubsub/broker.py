"""The broker interface: bytes between processes, one channel per hashtag.

Brokers only move bytes; which local connection gets what is the hub's business.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from app.config import Settings

MessageHandler = Callable[[str, bytes], None]


class BrokerUnavailable(RuntimeError):
    """The broker cannot be reached right now."""


class Broker(ABC):
    # Called when the connection that delivers messages is lost: from then on, messages may
    # be missing until on_resync.
    on_lost: Callable[[], None] | None = None
    # Called once the subscriptions are confirmed again after the broker connection was lost:
    # whatever was published meanwhile never arrived (the hub catches up from the change log).
    on_resync: Callable[[], None] | None = None

    @abstractmethod
    async def start(self, handler: MessageHandler, standing: Iterable[str] = ()) -> None:
        """Begin delivering messages of subscribed channels to handler(channel, data).
        The standing channels stay subscribed for the broker's life, from whenever it can
        (nothing waits for their confirmation)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections."""

    @abstractmethod
    async def publish(self, channel: str, data: bytes) -> None:
        """Send one message to every process subscribed to channel."""

    async def publish_many(self, channels: list[str], data: bytes) -> None:
        """The same message to several channels (one change touching several hashtags)."""
        for channel in channels:
            await self.publish(channel, data)

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Subscribe this process; returns once the subscription is confirmed."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Drop this process's subscription."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the broker answers."""

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for operators (connection losses, failed publishes)."""
        return {}


def make_broker(settings: Settings) -> Broker:
    """Redis when REDIS_URL is set, else the in-process broker."""
    if settings.redis_url:
        from app.pubsub.redis import RedisBroker

        return RedisBroker(settings.redis_url)
    from app.pubsub.memory import MemoryBroker

    return MemoryBroker()
