"""Subscribe to hashtags and print every frame; when the connection drops, reconnect and
resume from the last offset seen: `python examples/listen.py TOKEN python django`."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import websockets


async def listen(token: str, tags: list[str]) -> None:
    url = os.environ.get("LIVEPOST_WS", "ws://127.0.0.1:8000/ws")
    since: int | None = None  # the change log's offset this client has seen up to
    while True:
        try:
            async with websockets.connect(f"{url}?token={token}") as ws:
                for request_id, tag in enumerate(tags, start=100):
                    request = {"action": "subscribe_to_hashtag", "hashtag": tag,
                               "request_id": request_id}
                    if since is not None:
                        request["since"] = since  # missed changes come first, in order
                    await ws.send(json.dumps(request))
                async for frame in ws:
                    print(frame, flush=True)
                    since = _seen(json.loads(frame), since)
            reason = "closed by the server"
        except (OSError, websockets.WebSocketException) as error:
            reason = repr(error)  # e.g. a restarting server refusing for a moment
        print(f"# {reason}; resuming after offset {since}", file=sys.stderr, flush=True)
        await asyncio.sleep(1)


def _seen(message: dict, since: int | None) -> int | None:
    """An event's offset, or where a subscription starts."""
    if isinstance(message.get("offset"), int):
        return max(since or 0, message["offset"])
    data = message.get("data")
    if message.get("action") == "subscribe_to_hashtag" and isinstance(data, dict):
        if data.get("recovered") is False:
            print("# the log no longer reaches back that far: reload with `list`",
                  file=sys.stderr, flush=True)
            return data.get("offset")
        if since is None:
            return data.get("offset")
    return since


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    asyncio.run(listen(sys.argv[1], sys.argv[2:]))
