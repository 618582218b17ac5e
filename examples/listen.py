"""Subscribe to hashtags and print every frame: `python examples/listen.py TOKEN python django`."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import websockets


async def listen(token: str, tags: list[str]) -> None:
    url = os.environ.get("LIVEPOST_WS", "ws://127.0.0.1:8000/ws")
    async with websockets.connect(f"{url}?token={token}") as ws:
        for request_id, tag in enumerate(tags, start=100):
            await ws.send(json.dumps({"action": "subscribe_to_hashtag", "hashtag": tag,
                                      "request_id": request_id}))
        async for frame in ws:
            print(frame, flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    asyncio.run(listen(sys.argv[1], sys.argv[2:]))
