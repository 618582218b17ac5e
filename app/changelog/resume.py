"""Subscribing with a resume point: live channel first, backlog second, merged by offset.

Used by WebSocket subscriptions and the SSE stream alike. While the backlog is read, the
subscription's live events wait in its replay list; then both go out in offset order with
every offset once, so a change that is in the backlog and also arrived live is sent once.
"""

from __future__ import annotations

from app.changelog.reader import Backlog, ChangeLog
from app.pubsub.change import event_action
from app.pubsub.hub import Hub, Subscription


async def subscribe_from(
    hub: Hub, changelog: ChangeLog, subscription: Subscription, tag: str, since: int | None
) -> Backlog:
    """Subscribe to tag; with since, deliver tag's changes after it first. The returned
    backlog says where the log ends and whether since could be honoured."""
    had_tag = tag in subscription.tags
    subscription.replay = []
    try:
        await hub.subscribe(subscription, tag)
        backlog = await changelog.read(tag, since)
    except BaseException:
        live, subscription.replay = subscription.replay or [], None
        for _offset, frame in live:
            subscription.deliver(frame)
        if not had_tag:  # no half-made subscription behind an error reply
            hub.drop(subscription, tag)
        raise
    frames = dict(subscription.replay or ())
    subscription.replay = None
    if since is not None or not had_tag:  # a repeated plain subscribe keeps its start
        hub.set_floor(subscription, tag, backlog.offset)
    for change in backlog.changes:
        if change.offset in frames:
            continue
        action = event_action(change.old_tags, change.new_tags, subscription.tags)
        if action is not None:
            frames[change.offset] = subscription.frame(
                action, change.offset, change.event_head(action)
            )
    for offset in sorted(frames):
        subscription.deliver(frames[offset])
    return backlog
