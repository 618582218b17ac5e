"""The per-worker hub: local subscriptions, one broker subscription per hashtag.

The broker is told to subscribe on a tag's first local subscription and to unsubscribe on its
last (reference counted through the index). Every change message is turned into event frames
here, once per distinct frame, and handed to the subscriptions' connections.

Each event carries the resume watermark `safe`: every change at or below it has been
published, and so (the broker keeps each connection's messages in publish order) has already
been handed out here. The relays compute it (app/changelog/watermark.py) and publish it on
the broker behind those changes; the hub only takes it from there, and holds it still from
the moment its broker connection is lost until the catch-up from the log has run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from app.pubsub.broker import Broker
from app.pubsub.change import Change, event_action
from app.pubsub.channels import channel_for, control_channel, watermark_channel

log = logging.getLogger(__name__)

# The versions handed out lately per post, so copies of a change arriving on several channels
# are dropped, and a version arriving late reaches only subscriptions that got nothing newer.
# Bounded: a post untouched for this many later changes is forgotten, and only its last few
# versions are kept, which only matters if an old version were still in flight by then.
VERSION_MEMORY = 100_000
VERSION_HISTORY = 4
NOTHING: frozenset[str] = frozenset()


class Subscription:
    """The hashtags one connection subscribed under one request_id (and framing)."""

    __slots__ = (
        "deliver", "frame_key", "origins", "replay", "request_id_json", "stream_json", "tags",
    )  # fmt: skip

    def __init__(
        self, request_id_json: str, stream_json: str | None, deliver: Callable[[str], None]
    ) -> None:
        self.request_id_json = request_id_json
        self.stream_json = stream_json
        self.deliver = deliver
        self.tags: set[str] = set()
        # While a subscribe reads the log, live events wait here as (change, action), to be
        # merged with its backlog by offset (app/changelog/resume.py).
        self.replay: list[tuple[Change, str]] | None = None
        # The resume point of each tag subscribed with since: it has every change of the tag
        # after it (from the backlog, then live). None until a resume.
        self.origins: dict[str, int] | None = None
        # Subscriptions with equal keys get the same frame for the same event.
        self.frame_key: tuple[str | None, ...] = (request_id_json, stream_json)

    def frame(self, action: str, offset: int, safe: int, event_head: str) -> str:
        """The event frame for this subscription, from the shared head of the event (which
        holds offset and safe already)."""
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
        # Per post, (version, hashtags touched) of the versions handed out, oldest first.
        self._versions: OrderedDict[int, tuple[tuple[int, frozenset[str]], ...]] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        self.last_offset = 0  # the highest offset that came through here
        self._watermark_channel = watermark_channel(channel_prefix)
        self._control_channel = control_channel(channel_prefix)
        # Told each control message (app/pubsub/control.py); the runtime acts on it.
        self.on_control: Callable[[bytes], None] = lambda _message: None
        # The watermark events carry; while held (after a broker loss, until the catch-up),
        # what arrives is kept in _held_safe instead.
        self.safe = 0
        self._held_safe: int | None = None
        # Changes that arrived after a broker loss, until the catch-up merges them with what
        # it reads from the log (so subscribers get them in offset order).
        self._arrived: list[Change] | None = None
        self.losses = 0  # broker losses so far: a catch-up covers those before it began

    async def start(self, safe: int = 0) -> None:
        """Start with the watermark read from the log (valid: nothing is subscribed yet)."""
        self.safe = safe
        await self._broker.start(
            self.on_message, standing=[self._watermark_channel, self._control_channel]
        )

    def broker_lost(self) -> None:
        """Messages published from now on may be missing, until a catch-up from the log:
        hold the watermark still, and keep what arrives for the catch-up to merge."""
        self.losses += 1
        if self._held_safe is None:
            self._held_safe = self.safe
        if self._arrived is None:
            self._arrived = []

    def catch_up(self, changes: list[Change], losses: int) -> None:
        """Deliver changes read back from the log after a broker loss, merged by offset with
        those that arrived since: what was delivered already is dropped by version, as are
        subscriptions' pasts. Then the watermark moves again, unless the broker was lost
        again after the catch-up began (losses: the count then)."""
        merged = {change.offset: change for change in self._arrived or ()}
        merged.update((change.offset, change) for change in changes)
        lost_again = losses != self.losses
        self._arrived = [] if lost_again else None
        for offset in sorted(merged):
            self._deliver(merged[offset])
        if not lost_again and self._held_safe is not None:
            self.safe, self._held_safe = max(self.safe, self._held_safe), None

    def catch_up_failed(self) -> None:
        """The log could not be read: deliver what arrived; the watermark stays held (a
        client resuming from it gets what this worker missed)."""
        arrived, self._arrived = self._arrived or [], None
        for change in arrived:
            self._deliver(change)

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

    def received_after(self, subscription: Subscription) -> dict[str, int]:
        """The subscription's tags, each with the offset after which it got every change of
        the tag: its resume point, or for a plain subscribe its floor."""
        received = {tag: self._index[tag][subscription] for tag in subscription.tags}
        for tag, origin in (subscription.origins or {}).items():
            if tag in received:
                received[tag] = min(received[tag], origin)
        return received

    def floor(self) -> int:
        """Where a catch-up must start so no local subscription misses a change: everything
        up to the watermark arrived before the outage."""
        floors = [f for members in self._index.values() for f in members.values()]
        return max(self.safe, min(floors, default=self.safe))

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
        if subscription.origins is not None:
            subscription.origins.pop(tag, None)
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

    def on_message(self, channel: str, message: bytes) -> None:
        """A change arrived from the broker: deliver one event per interested subscription."""
        if channel == self._watermark_channel:
            self._on_watermark(int(message))
            return
        if channel == self._control_channel:
            self.on_control(message)
            return
        change = Change.decode(message)
        if self._arrived is not None:
            self._arrived.append(change)
            return
        self._deliver(change)

    def _deliver(self, change: Change) -> None:
        if change.offset > self.last_offset:
            self.last_offset = change.offset
        excluded = self._excluded(change)
        if excluded is not None:
            self._fan_out(change, self._targets(change), excluded)

    def _on_watermark(self, safe: int) -> None:
        if self._held_safe is not None:
            self._held_safe = max(self._held_safe, safe)
        elif safe > self.safe:
            self.safe = safe

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

    def _fan_out(
        self, change: Change, targets: dict[Subscription, int], excluded: frozenset[str]
    ) -> None:
        heads: dict[str, str] = {}
        frames: dict[tuple[str, tuple[str | None, ...]], str] = {}
        offset = change.offset
        for subscription, floor in targets.items():
            # Committed before the subscription's reply: not its business (a resume's backlog
            # already brought it, when asked for).
            if offset <= floor:
                continue
            if excluded and not subscription.tags.isdisjoint(excluded):
                continue  # a late version: this subscription has a newer one
            action = event_action(change.old_tags, change.new_tags, subscription.tags)
            if action is None:
                continue
            if subscription.replay is not None:
                subscription.replay.append((change, action))
                continue
            head = heads.get(action)
            if head is None:
                head = heads[action] = change.event_head(action, self.safe)
            # Subscribers sharing a request_id and framing share one frame string.
            key = (action, subscription.frame_key)
            frame = frames.get(key)
            if frame is None:
                frame = frames[key] = subscription.frame(action, offset, self.safe, head)
            subscription.deliver(frame)

    def _excluded(self, change: Change) -> frozenset[str] | None:
        """None: drop the change (a copy of one handed out, or too old to judge). Otherwise
        the hashtags whose subscriptions must not get it: those of newer versions handed out
        already (a late version must not overwrite a newer one)."""
        pk, version = change.pk, change.version
        history = self._versions.get(pk)
        entry = (version, change.tags)
        if history is None or version > history[-1][0]:  # the usual case: the newest yet
            self._versions[pk] = (
                (entry,) if history is None else (*history, entry)[-VERSION_HISTORY:]
            )
            self._versions.move_to_end(pk)
            if len(self._versions) > VERSION_MEMORY:
                self._versions.popitem(last=False)
            return NOTHING
        if len(history) == VERSION_HISTORY and version < history[0][0]:
            return None
        newer: set[str] = set()
        for seen, tags in history:
            if seen == version:
                return None
            if seen > version:
                newer |= tags
        self._versions[pk] = tuple(sorted((*history, entry)))[-VERSION_HISTORY:]
        return frozenset(newer)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("broker subscription change failed: %r", task.exception())
