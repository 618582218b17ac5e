"""Channel names: the one place a hashtag becomes a broker channel."""

from __future__ import annotations


def channel_for(prefix: str, tag: str) -> str:
    """`<prefix>:tag:<tag>`; the prefix lets two deployments share one Redis."""
    return f"{prefix}:tag:{tag}"
