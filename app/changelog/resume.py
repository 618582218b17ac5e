"""Subscribing with a resume point: live channel first, backlog second, merged by offset.

Used by WebSocket subscriptions and the SSE stream alike. While the backlog is read, the
subscription's live events wait in its replay list; then both go out in offset order with
every offset once, so a change that is in the backlog and also arrived live is sent once.

The frames of that merge, and the reply (which goes out before them), carry a watermark no
higher than the resume point, since they are not in publish order; the first live event
after them carries the hub's.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.changelog.reader import ChangeLog
from app.pubsub.change import Change, event_action
from app.pubsub.hub import Hub, Subscription


@dataclass(frozen=True, slots=True)
class Subscribed:
    offset: int  # the log's end when the subscription started
    safe: int  # the watermark to resume from, should the connection drop from here on
    recovered: bool  # False: since could not be honoured (reload with list)


async def subscribe_from(
    hub: Hub, changelog: ChangeLog, subscription: Subscription, tag: str, since: int | None
) -> Subscribed:
    """Subscribe to tag; with since, deliver tag's changes after it first."""
    had_tag = tag in subscription.tags
    held = hub.received_after(subscription)
    # Everything at or below it reached this subscription before the merge's frames.
    safe = hub.safe if since is None else min(hub.safe, since)
    subscription.replay = []
    try:
        await hub.subscribe(subscription, tag)
        backlog = await changelog.read(tag, since, held)
    except BaseException:
        live, subscription.replay = subscription.replay or [], None
        _deliver(subscription, {change.offset: (change, action) for change, action in live}, safe)
        if not had_tag:  # no half-made subscription behind an error reply
            hub.drop(subscription, tag)
        raise
    merged = {change.offset: (change, action) for change, action in subscription.replay}
    subscription.replay = None
    # With since, the backlog holds every change up to the log's end, late ones included.
    # A plain subscribe starts there too: a client that subscribes, then lists, has the
    # late ones from its list (and a late create of a post deleted since is not revived).
    if since is not None or not had_tag:  # a repeated plain subscribe keeps its start
        hub.set_floor(subscription, tag, backlog.offset)
    if since is not None:
        origins = subscription.origins or {}
        subscription.origins = origins | {tag: min(since, origins.get(tag, since))}
    held_tags = set(held)
    for change in backlog.changes:
        if change.offset in merged:
            continue
        action = event_action(change.old_tags, change.new_tags, subscription.tags)
        if action is None:
            continue
        had = backlog.superseded.get(change.pk, 0)
        if change.version < had:
            continue  # it has a newer version of the post already
        if change.version == had and _removes(action) == _removes(
            event_action(change.old_tags, change.new_tags, held_tags)
        ):
            continue  # it has this very change; with fewer tags it may have been a delete
            # (the post moved between two of its tags), which this event now corrects
        merged[change.offset] = (change, action)
    _deliver(subscription, merged, safe)
    return Subscribed(backlog.offset, safe, backlog.recovered)


def _deliver(subscription: Subscription, merged: dict[int, tuple[Change, str]], safe: int) -> None:
    for offset in sorted(merged):
        change, action = merged[offset]
        head = change.event_head(action, safe)
        subscription.deliver(subscription.frame(action, offset, safe, head))


def _removes(action: str | None) -> bool:
    return action == "delete"
