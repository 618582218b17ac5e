"""livepost's WebSocket protocol under uvicorn (app/transport/wsprotocol.py): event frames
encoded once and written straight to the sockets, with the socket's flow control; and the
plain ASGI path the app falls back to under any other protocol or server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from app.protocol.outgoing import Outgoing
from app.transport.wsprotocol import LiveSocketProtocol, text_frame
from app.worker import WS_PROTOCOL
from tests.raw_websocket import RawWebSocket
from tests.support import Endpoint, event, ok, sqlite_server, subscribe, unique
from tests.test_slow_clients import GENEROUS, body_for, publish, slow_client


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_a_text_frame_is_what_a_client_parses(length: int) -> None:
    # "é" is two bytes: the header must give the UTF-8 length, not the character count.
    text = ("é" * length)[: max(0, length // 2)] + "x" * (length - length // 2)
    client = ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN, max_size=None)
    client.receive_data(text_frame(text))
    [frame] = client.events_received()
    assert (frame.opcode, frame.fin, frame.rsv1) == (Opcode.TEXT, True, False)
    assert frame.data.decode() == text


def test_the_same_string_is_encoded_once() -> None:
    text = '{"action":"create"}' + unique()
    first = text_frame(text)
    assert text_frame(text) is first
    assert text_frame(text + "!") != first


def test_frames_go_straight_out_until_the_socket_refuses_then_queue_behind() -> None:
    """Outgoing with write_now: written at once while the socket takes them; once it refuses,
    that frame and every later one queue (order kept), the writer is asked for once, and the
    queue still overflows at its limit."""
    written: list[str] = []
    accepting = [True]
    writers: list[None] = []
    overflows: list[None] = []

    def write_now(frame: str) -> bool:
        if accepting[0]:
            written.append(frame)
        return accepting[0]

    outgoing = Outgoing(
        3,
        lambda: overflows.append(None),
        write_now=write_now,
        on_queued=lambda: writers.append(None),
    )
    outgoing.put_event("e1")
    outgoing.put_reply("r1")
    assert (written, writers) == (["e1", "r1"], [])
    accepting[0] = False
    outgoing.put_event("e2")
    accepting[0] = True  # the socket takes frames again, but e3 must not overtake e2
    outgoing.put_event("e3")
    assert (written, writers, outgoing.take()) == (["e1", "r1"], [None], ["e2", "e3"])
    outgoing.put_event("e4")  # nothing queued any more: straight out
    assert written == ["e1", "r1", "e4"]
    accepting[0] = False
    for frame in ("e5", "e6", "e7", "e8"):
        outgoing.put_event(frame)
    assert overflows == [None]  # the fourth queued frame


@pytest.mark.parametrize("ws", [WS_PROTOCOL, "websockets-sansio"])
async def test_replies_and_events_in_order_on_either_protocol(tmp_path: Path, ws: str) -> None:
    """The reply to a create comes before its event on the writer's own connection, and other
    subscribers get the event, whether frames go straight to the socket or through ASGI."""
    async with sqlite_server(tmp_path, uvicorn_options={"ws": ws}) as server:
        endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
        try:
            user = await endpoint.user()
            writer, reader = await endpoint.connect(user), await endpoint.connect(user)
            tag = unique()
            await subscribe(writer, tag, "mine")
            await subscribe(reader, tag, "theirs")
            fast = [isinstance(socket, LiveSocketProtocol) for socket in server.sockets]
            assert fast == [ws == WS_PROTOCOL] * 2
            if ws == WS_PROTOCOL:  # uvicorn's attributes all went into slots: no dict
                assert [vars(socket) for socket in server.sockets] == [{}, {}]
            for index in range(20):
                body = f"#{tag} post {index}"
                await writer.send({"action": "create", "data": {"body": body}, "request_id": index})
                reply = await writer.recv()
                post = reply["data"]
                assert reply == ok("create", post, index, 201)
                assert await writer.recv() == event("create", post["pk"], post, "mine")
                assert await reader.recv() == event("create", post["pk"], post, "theirs")
        finally:
            await endpoint.close_clients()


async def test_a_socket_that_fell_behind_gets_every_frame_in_order_once_it_reads(
    tmp_path: Path,
) -> None:
    """A client that stops reading fills the kernel's buffers, then the transport's: the
    transport pauses and frames wait in the connection's queue (large enough here not to
    overflow). When the client reads again, it gets every one, in order, and the connection
    goes on serving requests."""
    async with sqlite_server(tmp_path, ws_queue_size=100_000, **GENEROUS) as server:
        endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
        client: RawWebSocket | None = None
        try:
            user = await endpoint.user()
            tag = unique("behind")
            client = await slow_client(server.port, user, tag, "slow")
            writer = await endpoint.connect(user)
            posts: list[dict[str, Any]] = []
            while not any(_paused(socket) for socket in server.sockets):
                assert len(posts) < 20_000, "the transport never paused"
                posts += await publish(writer, user, body_for(tag), 500)
            posts += await publish(writer, user, body_for(tag), 200)  # queued behind the rest

            for post in posts:
                assert await client.recv_json() == event("create", post["pk"], post, "slow")
            await client.send_json({"action": "retrieve", "pk": posts[0]["pk"], "request_id": 1})
            assert await client.recv_json() == ok("retrieve", posts[0], 1)
            assert not any(_paused(socket) for socket in server.sockets)
        finally:
            if client is not None:
                client.close()
            await endpoint.close_clients()


def _paused(socket: Any) -> bool:
    return not socket.writable.is_set()
