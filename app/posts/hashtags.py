"""Hashtags: what a body contains and what a client may subscribe to."""

from __future__ import annotations

import re

_TAG = re.compile(r"#([a-z0-9]+)")
_SUBSCRIBABLE = re.compile(r"#?([a-z0-9]+)")


def extract_hashtags(body: str) -> frozenset[str]:
    """The matches of #[a-z0-9]+ in the lowercased body, without the '#'."""
    return frozenset(_TAG.findall(body.lower()))


def normalize_hashtag(value: object, max_length: int = 100) -> str | None:
    """`python`, `Python` and `#python` all name `python`; None when it is no hashtag."""
    if not isinstance(value, str) or len(value) > max_length + 1:
        return None
    match = _SUBSCRIBABLE.fullmatch(value.lower())
    if match is None or len(match.group(1)) > max_length:
        return None
    return match.group(1)
