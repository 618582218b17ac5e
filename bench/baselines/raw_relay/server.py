"""The raw relay: the least work one Python process can do to relay hashtag events.

It answers just enough of the action protocol for the benchmark (`subscribe_to_hashtag`,
`create`, `list`) with no database, no authentication and no broker. A create is answered,
then its event is serialized once and handed to websockets.broadcast for every local
subscriber of the post's hashtags. Processes share nothing: one process is one worker.

    python server.py 8100        # ws://127.0.0.1:8100/ (any path)
"""

import asyncio
import itertools
import json
import re
import sys
from collections import defaultdict

import websockets

try:
    import uvloop
except ImportError:  # pragma: no cover (the benchmark installs it)
    uvloop = None

HASHTAG = re.compile(r"#[a-z0-9]+")
subscribers: dict[str, set] = defaultdict(set)  # "#tag" -> connections
next_pk = itertools.count(1)


def reply(action, request_id, status, data):
    """A reply in the action protocol's envelope."""
    return json.dumps({"errors": [], "data": data, "action": action,
                       "response_status": status, "request_id": request_id})


async def handler(ws):
    tags = set()  # this connection's subscriptions, dropped when it closes
    try:
        async for frame in ws:
            message = json.loads(frame)
            action, request_id = message.get("action"), message.get("request_id")
            if action == "subscribe_to_hashtag":
                tag = "#" + str(message["hashtag"]).lower().lstrip("#")
                subscribers[tag].add(ws)
                tags.add(tag)
                await ws.send(reply(action, request_id, 201, {}))
            elif action == "create":
                body = message["data"]["body"]
                post = {"pk": next(next_pk), "author": 0, "body": body, "version": 1}
                await ws.send(reply(action, request_id, 201, post))
                audience = set()
                for tag in set(HASHTAG.findall(body.lower())):
                    audience |= subscribers.get(tag, set())
                if audience:
                    event = {"action": "create", "pk": post["pk"], "data": post,
                             "request_id": None}
                    websockets.broadcast(audience, json.dumps(event))
            elif action == "list":
                await ws.send(reply(action, request_id, 200, []))
            else:
                await ws.send(reply(action, request_id, 405, None))
    except websockets.ConnectionClosed:
        pass
    finally:
        for tag in tags:
            subscribers[tag].discard(ws)


async def main(port):
    # No per-connection read limit and no permessage-deflate: the cheapest relay possible.
    async with websockets.serve(handler, "127.0.0.1", port, max_queue=None, compression=None):
        await asyncio.Future()  # until terminated


if __name__ == "__main__":
    if uvloop:
        uvloop.install()
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8100))
