"""Subscribe to hashtags and print every event once; when the connection drops, reconnect and
resume from the watermark each subscription was given: `python examples/listen.py TOKEN python
django`. (docs/protocol.md, "Offsets, the watermark and resuming".)"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import websockets


async def listen(token: str, tags: list[str]) -> None:
    url = os.environ.get("LIVEPOST_WS", "ws://127.0.0.1:8000/ws")
    # One subscription (request_id) per hashtag, each with its resume point: the highest
    # `safe` it was given. Not the highest offset: a change published late can have a lower one.
    resume_points: dict[int, int] = {}
    versions: dict[int, int] = {}  # per post, the version printed last
    while True:
        try:
            async with websockets.connect(f"{url}?token={token}") as ws:
                for request_id, tag in enumerate(tags, start=100):
                    request = {"action": "subscribe_to_hashtag", "hashtag": tag,
                               "request_id": request_id}
                    if request_id in resume_points:
                        request["since"] = resume_points[request_id]  # missed changes first
                    await ws.send(json.dumps(request))
                async for frame in ws:
                    message = json.loads(frame)
                    _keep_resume_point(message, resume_points)
                    if _is_new(message, versions):
                        print(frame, flush=True)
            reason = "closed by the server"
        except (OSError, websockets.WebSocketException) as error:
            reason = repr(error)  # e.g. a restarting server refusing for a moment
        print(f"# {reason}; resuming from {resume_points}", file=sys.stderr, flush=True)
        await asyncio.sleep(1)


def _keep_resume_point(message: dict, resume_points: dict[int, int]) -> None:
    request_id = message.get("request_id")
    if "response_status" not in message:  # an event
        if isinstance(message.get("safe"), int):
            resume_points[request_id] = max(resume_points.get(request_id, 0), message["safe"])
        return
    data = message.get("data")
    if message.get("action") != "subscribe_to_hashtag" or not isinstance(data, dict):
        return
    if data.get("recovered") is False:
        print("# the log no longer reaches back that far: reload with `list`",
              file=sys.stderr, flush=True)
        resume_points[request_id] = data["safe"]  # from here on, even if lower
    elif isinstance(data.get("safe"), int):
        resume_points[request_id] = max(resume_points.get(request_id, 0), data["safe"])


def _is_new(message: dict, versions: dict[int, int]) -> bool:
    """A resume re-sends what came after the resume point: skip versions already printed."""
    if "response_status" in message or message.get("action") == "delete":
        return True
    post = message.get("data") or {}
    pk, version = post.get("pk"), post.get("version", 0)
    if version <= versions.get(pk, 0):
        return False
    versions[pk] = version
    return True


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    asyncio.run(listen(sys.argv[1], sys.argv[2:]))
