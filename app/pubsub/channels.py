"""Channel names: the one place a hashtag becomes a broker channel."""

from __future__ import annotations


def channel_for(prefix: str, tag: str) -> str:
    """`<prefix>:tag:<tag>`; the prefix lets two deployments share one Redis."""
    return f"{prefix}:tag:{tag}"


def watermark_channel(prefix: str) -> str:
    """`<prefix>:safe`: the relays' resume watermark, which every worker follows (no hashtag
    channel can be named so)."""
    return f"{prefix}:safe"


def control_channel(prefix: str) -> str:
    """`<prefix>:control`: small orders every worker follows, such as closing a deactivated
    user's connections (no hashtag channel can be named so either)."""
    return f"{prefix}:control"
