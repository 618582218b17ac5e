"""The per-worker hub: local subscriptions, one broker subscription per hashtag.

The broker is told to subscribe on a tag's first local subscription and to unsubscribe on its
last (reference counted through the index). Every change message is turned into event frames
here, once per distinct frame, and handed to the subscriptions' connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from app.pubsub.broker import Broker
from app.pubsub.change import Change, event_action
from app.pubsub.channels import channel_for

log = logging.getLogger(__name__)

# Highest version seen per post, so copies of a change arriving on several channels and stale
# versions arriving late are dropped. Bounded: a post untouched for this many later changes is
# forgotten, which only matters if one of its old versions were still in flight by then.
VERSION_MEMORY = 100_000


class Subscription:
    """The hashtags one connection subscribed under one request_id (and framing)."""

    __slots__ = ("deliver", "frame_key", "replay", "request_id_json", "stream_json", "tags")

    def __init__(
        self, request_id_json: str, stream_json: str | None, deliver: Callable[[str], None]
    ) -> None:
        self.request_id_json = request_id_json
        self.stream_json = stream_json
        self.deliver = deliver
        self.tags: set[str] = set()
        # While a resume reads the backlog, live events wait here as (offset, frame), to be
        # merged with it by offset (app/protocol/resume.py).
        self.replay: list[tuple[int, str]] | None = None
        # Subscriptions with equal keys get the same frame for the same event.
        self.frame_key: tuple[str | None, ...] = (request_id_json, stream_json)

    def frame(self, action: str, offset: int, event_head: str) -> str:
        """The event frame for this subscription, from the shared head of the event."""
        event = event_head + self.request_id_json + "}"
        if self.stream_json is None:
            return event
        return '{"stream":' + self.stream_json + ',"payload":' + event + "}"


class Hub:
    def __init__(self, broker: Broker, channel_prefix: str) -> None:
        self._broker = broker
        self._prefix = channel_prefix
        # Per tag, its local subscriptions and the log offset each subscribed at (its floor:
        # a catch-up after a broker outage never gives it a change from before it came).
        self._index: dict[str, dict[Subscription, int]] = {}
        self._active: set[str] = set()
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._versions: OrderedDict[int, int] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        self.last_offset = 0  # the highest offset that came through here

    async def start(self) -> None:
        await self._broker.start(self.on_message)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        self._index.clear()
        await self._broker.close()

    @property
    def local_tags(self) -> frozenset[str]:
        """Tags with at least one local subscription."""
        return frozenset(self._index)

    async def subscribe(self, subscription: Subscription, tag: str) -> None:
        """Add tag to the subscription; returns once the broker confirms the channel."""
        subscription.tags.add(tag)
        self._index.setdefault(tag, {}).setdefault(subscription, 0)
        try:
            await self._reconcile(tag)
        except BaseException:
            self._remove(subscription, tag)
            self._reconcile_later(tag)
            raise

    def set_floor(self, subscription: Subscription, tag: str, offset: int) -> None:
        """The subscription has (or will have, from its backlog) everything of tag up to
        offset: later copies of those changes are not delivered to it."""
        members = self._index.get(tag)
        if members is not None and subscription in members:
            members[subscription] = offset

    def floor(self) -> int:
        """Where a catch-up must start so no local subscription misses a change."""
        floors = [f for members in self._index.values() for f in members.values()]
        return max(self.last_offset, min(floors, default=self.last_offset))

    async def unsubscribe(self, subscription: Subscription, tag: str) -> None:
        """Remove tag from the subscription; the last one out drops the channel."""
        if self._remove(subscription, tag):
            await self._reconcile(tag)

    def discard(self, subscription: Subscription) -> None:
        """Forget a subscription whose connection is gone (without waiting for the broker)."""
        for tag in list(subscription.tags):
            self.drop(subscription, tag)

    def drop(self, subscription: Subscription, tag: str) -> None:
        """Remove one tag without waiting for the broker."""
        if self._remove(subscription, tag):
            self._reconcile_later(tag)

    def _remove(self, subscription: Subscription, tag: str) -> bool:
        """Remove one tag; True when that left the tag without local subscriptions."""
        subscription.tags.discard(tag)
        members = self._index.get(tag)
        if members is None or subscription not in members:
            return False
        del members[subscription]
        if members:
            return False
        del self._index[tag]
        return True

    def _reconcile_later(self, tag: str) -> None:
        task = asyncio.get_running_loop().create_task(self._reconcile(tag))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def _reconcile(self, tag: str) -> None:
        """Bring the broker's subscription for tag in line with the index, one operation at a
        time per tag, so a subscribe racing an unsubscribe always ends in the right state."""
        while True:
            pending = self._pending.get(tag)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            wanted = tag in self._index
            if wanted == (tag in self._active):
                return
            task = asyncio.get_running_loop().create_task(self._apply(tag, wanted))
            self._pending[tag] = task
            await asyncio.shield(task)

    async def _apply(self, tag: str, subscribe: bool) -> None:
        channel = channel_for(self._prefix, tag)
        try:
            if subscribe:
                await self._broker.subscribe(channel)
                self._active.add(tag)
            else:
                self._active.discard(tag)
                await self._broker.unsubscribe(channel)
        finally:
            # Removed by the task itself, so whoever wakes on it sees the new state.
            del self._pending[tag]

    def on_message(self, _channel: str, message: bytes) -> None:
        """A change arrived from the broker: deliver one event per interested subscription."""
        change = Change.decode(message)
        if change.offset > self.last_offset:
            self.last_offset = change.offset
        if self._is_new(change):
            self._fan_out(change, self._targets(change))

    def catch_up(self, changes: list[Change]) -> None:
        """Deliver changes read back from the log after a broker outage, in offset order:
        what arrived live already is dropped by version, as are subscriptions' pasts."""
        for change in changes:
            if self._is_new(change):
                self._fan_out(change, self._targets(change))
            self.last_offset = max(self.last_offset, change.offset)

    def _targets(self, change: Change) -> dict[Subscription, int]:
        """The subscriptions of the change's tags, each with its lowest floor among them.
        A copy: delivering may close a connection, which changes the index."""
        tags = change.tags
        if len(tags) == 1:
            for tag in tags:
                return dict(self._index.get(tag, ()))
        targets: dict[Subscription, int] = {}
        for tag in tags:
            for subscription, floor in self._index.get(tag, {}).items():
                known = targets.get(subscription)
                if known is None or floor < known:
                    targets[subscription] = floor
        return targets

    def _fan_out(self, change: Change, targets: dict[Subscription, int]) -> None:
        heads: dict[str, str] = {}
        frames: dict[tuple[str, tuple[str | None, ...]], str] = {}
        offset = change.offset
        for subscription, floor in targets.items():
            # Committed before the subscription's reply: not its business (a resume's backlog
            # already brought it, when asked for).
            if offset <= floor:
                continue
            action = event_action(change.old_tags, change.new_tags, subscription.tags)
            if action is None:
                continue
            head = heads.get(action)
            if head is None:
                head = heads[action] = change.event_head(action)
            # Subscribers sharing a request_id and framing share one frame string.
            key = (action, subscription.frame_key)
            frame = frames.get(key)
            if frame is None:
                frame = frames[key] = subscription.frame(action, change.offset, head)
            if subscription.replay is None:
                subscription.deliver(frame)
            else:
                subscription.replay.append((change.offset, frame))

    def _is_new(self, change: Change) -> bool:
        seen = self._versions.get(change.pk)
        if seen is not None and seen >= change.version:
            return False
        self._versions[change.pk] = change.version
        self._versions.move_to_end(change.pk)
        if len(self._versions) > VERSION_MEMORY:
            self._versions.popitem(last=False)
        return True


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("broker subscription change failed: %r", task.exception())
