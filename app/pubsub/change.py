"""A committed post change as it travels between workers, and the per-subscription diff rule.

The writer serializes the post once; every worker splices those bytes into its events and only
parses the small header line, so no worker re-encodes a post per connection.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Change:
    # The change's position in the change log (its outbox id), growing with commit order.
    offset: int
    pk: int
    version: int
    old_tags: frozenset[str]
    new_tags: frozenset[str]
    # The event's `data`, already JSON: the post, or {"pk": ..} for a delete.
    data_json: str

    @property
    def tags(self) -> frozenset[str]:
        """Every hashtag the change touches: a message goes to each one's channel."""
        return self.old_tags | self.new_tags

    def event_head(self, action: str, safe: int) -> str:
        """An event without its request_id value and closing brace (each subscription
        appends its own): built once per action, whatever the number of subscribers.
        safe is the resume watermark the event carries (app/pubsub/hub.py)."""
        data = f'{{"pk":{self.pk}}}' if action == "delete" else self.data_json
        return (
            f'{{"action":"{action}","pk":{self.pk},"data":{data},'
            f'"offset":{self.offset},"safe":{safe},"request_id":'
        )

    def encode(self) -> bytes:
        header = orjson.dumps(
            {
                "o": self.offset,
                "pk": self.pk,
                "v": self.version,
                "old": sorted(self.old_tags),
                "new": sorted(self.new_tags),
            }
        )
        return header + b"\n" + self.data_json.encode()

    @classmethod
    def decode(cls, message: bytes) -> Change:
        header, _, data = message.partition(b"\n")
        fields = orjson.loads(header)
        return cls(
            offset=fields["o"],
            pk=fields["pk"],
            version=fields["v"],
            old_tags=frozenset(fields["old"]),
            new_tags=frozenset(fields["new"]),
            data_json=data.decode(),
        )


def event_action(old: frozenset[str], new: frozenset[str], subscribed: set[str]) -> str | None:
    """DCRF's group diff, per subscription: joined -> create, kept -> update, left -> delete."""
    was = not old.isdisjoint(subscribed)
    now = not new.isdisjoint(subscribed)
    if now:
        return "update" if was else "create"
    return "delete" if was else None
