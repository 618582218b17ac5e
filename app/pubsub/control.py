"""Control messages between workers on `<prefix>:control` (see channels.control_channel).

Workers share nothing but the database and the broker: an order that concerns every worker's
connections (close this user's) goes out as one small JSON message that every hub follows.
Like every pub/sub message it is at most once: a worker cut off from the broker at that
moment does not get it (its connections of that user last until they reconnect, when their
token is refused).
"""

from __future__ import annotations

import orjson

CLOSE_USER = "close_user"


def close_user(user_id: int) -> bytes:
    """Close every connection (WebSocket, SSE) of this user."""
    return orjson.dumps({"order": CLOSE_USER, "user": user_id})


def decode(message: bytes) -> tuple[str, int] | None:
    """(order, user id), or None for a message this worker does not understand (a newer
    worker's order during a rolling deploy is ignored, not a crash)."""
    try:
        data = orjson.loads(message)
        order, user = data["order"], data["user"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(order, str) or not isinstance(user, int) or isinstance(user, bool):
        return None
    return order, user
