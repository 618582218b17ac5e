"""GET /hashtags/{tag}/events: one hashtag's events as Server-Sent Events.

The same subscription machinery as a WebSocket subscription (request_id null): the hub
formats each event once for all SSE streams, `Last-Event-ID` resumes like `since`, and the
stream's queue is bounded like a socket's (overflow ends the stream; the client's automatic
reconnect resumes from the last watermark it was given, so nothing is lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.security.utils import get_authorization_scheme_param
from starlette.types import Receive, Scope, Send

from app.accounts.service import Identity
from app.changelog.resume import subscribe_from
from app.db import is_unavailable
from app.posts.hashtags import normalize_hashtag
from app.posts.validation import FieldErrors, clean_integer
from app.protocol.admission import Ticket
from app.protocol.errors import INVALID_HASHTAG
from app.protocol.outgoing import Outgoing
from app.pubsub.broker import BrokerUnavailable
from app.pubsub.hub import Subscription
from app.runtime import Runtime
from app.transport.deps import RuntimeDep

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])

_MAX_OFFSET = 2**63 - 1
_SSE_FRAME_KEY = ("sse",)


class SseSubscription(Subscription):
    """A subscription whose frames are SSE messages: id = offset, event = action, then an
    id-only message holding the watermark. The event's `lastEventId` is its offset, while
    the id a browser sends when it reconnects is the watermark: a resume from the offset
    could miss a change published late."""

    __slots__ = ()

    def __init__(self, deliver: Any) -> None:
        super().__init__("null", None, deliver)
        self.frame_key = _SSE_FRAME_KEY  # every SSE stream shares the same text per event

    def frame(self, action: str, offset: int, safe: int, event_head: str) -> str:
        return f"id: {offset}\nevent: {action}\ndata: {event_head}null}}\n\nid: {safe}\n\n"


class EventStream(Response):
    """The response: streams the queue, keeps the connection alive, cleans up on exit
    (whichever way it ends: the client leaves, the worker stops, the token expires)."""

    def __init__(
        self,
        runtime: Runtime,
        subscription: SseSubscription,
        tag: str,
        outgoing: Outgoing,
        ticket: Ticket,
        identity: Identity,
        headers: dict[str, str],
        safe: int,
    ) -> None:  # no super().__init__: it would add a Content-Length
        self._runtime = runtime
        self._subscription = subscription
        self._tag = tag
        self._outgoing = outgoing
        self._ticket = ticket
        self._identity = identity
        self._safe = safe
        self.status_code = 200
        self.background = None
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": self.raw_headers,
                }
            )
            pump = asyncio.ensure_future(self._pump(send))
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, gone):
                    task.cancel()
                await asyncio.gather(pump, gone, return_exceptions=True)
            if pump.done() and not pump.cancelled() and pump.exception() is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            self._runtime.hub.drop(self._subscription, self._tag)
            self._runtime.admission.release(self._ticket)

    async def _pump(self, send: Send) -> None:
        keepalive = self._runtime.settings.sse_keepalive_seconds
        # A comment first: the client sees the stream open at once, before any event; and
        # the watermark as the id to come back with, should it reconnect before any event.
        opening = f": subscribed\nid: {self._safe}\n\n".encode()
        await send({"type": "http.response.body", "body": opening, "more_body": True})
        while True:
            left = self._identity.expires_at - time.time()
            if left <= 0:
                return  # the token expired: the client reconnects with a fresh one
            try:
                async with asyncio.timeout(min(keepalive, left)):
                    frames = await self._outgoing.drain()
            except TimeoutError:
                frames = [": keep-alive\n\n"]
            if frames is None:  # overflow or shutdown
                return
            body = "".join(frames).encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _identity_token(authorization: str | None, token: str | None) -> str | None:
    scheme, credentials = get_authorization_scheme_param(authorization)
    if authorization and scheme.lower() == "bearer" and credentials:
        return credentials
    return token


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An endless `text/event-stream`: `id:` the offset, `event:` the action, "
        "`data:` the event JSON (request_id null), then an id-only message with the resume "
        "watermark (what a reconnecting client sends back as Last-Event-ID); `: keep-alive` "
        "comments in between. Headers X-Livepost-Offset, X-Livepost-Safe and "
        "X-Livepost-Recovered answer like the subscribe reply.",
        "content": {
            "text/event-stream": {
                "example": 'id: 57\nevent: create\ndata: {"action":"create","pk":23,'
                '"data":{"pk":23,"author":4,"body":"Hello #python","created_at":'
                '"2020-05-31T00:46:33+00:00","version":1},"offset":57,"safe":57,"request_id":null}\n\n'
                "id: 57\n\n"
            }
        },
    },
    400: {"description": "Not a hashtag, or a Last-Event-ID that is no offset."},
    401: {"description": "Missing or invalid token (header or ?token=)."},
    429: {"description": "Too many connections from this address or user."},
    503: {"description": "The database or the broker is unavailable, or the worker is stopping."},
}


@router.get(
    "/hashtags/{tag}/events",
    responses=_RESPONSES,
    response_class=Response,
    summary="Stream one hashtag's events (Server-Sent Events)",
)
async def hashtag_events(
    tag: str,
    request: Request,
    runtime: RuntimeDep,
    token: Annotated[str | None, Query(description="The JWT, when no header can be set.")] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this watermark (the id the stream gave last).",
        ),
    ] = None,
) -> Response:
    raw_token = _identity_token(authorization, token)
    identity = await runtime.accounts.identify(raw_token) if raw_token else None
    if identity is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Invalid token." if raw_token else "Not authenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    hashtag = normalize_hashtag(tag, max_length=runtime.settings.hashtag_max_length)
    if hashtag is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, INVALID_HASHTAG)
    since = None
    if last_event_id is not None and last_event_id.strip():
        try:
            since = min(clean_integer("Last-Event-ID", last_event_id, minimum=0), _MAX_OFFSET)
        except FieldErrors:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, "Last-Event-ID must be an offset (an integer >= 0)."
            ) from None
    ip = request.client.host if request.client else "unknown"
    outgoing = Outgoing(runtime.settings.ws_queue_size, lambda: None)
    ticket = runtime.admission.admit(ip, identity.user_id, outgoing.close)
    if ticket is None:
        if runtime.admission.closing:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "Server is stopping, try again."
            )
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "Too many connections.")
    subscription = SseSubscription(outgoing.put_event)
    try:
        subscribed = await subscribe_from(
            runtime.hub, runtime.changelog, subscription, hashtag, since
        )
    except BaseException as error:
        runtime.admission.release(ticket)
        if isinstance(error, BrokerUnavailable) or (
            isinstance(error, Exception) and is_unavailable(error)
        ):
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "Service temporarily unavailable."
            ) from None
        raise
    headers = {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        "X-Livepost-Offset": str(subscribed.offset),
        "X-Livepost-Safe": str(subscribed.safe),
    }
    if since is not None:
        headers["X-Livepost-Recovered"] = "true" if subscribed.recovered else "false"
    return EventStream(
        runtime, subscription, hashtag, outgoing, ticket, identity, headers, subscribed.safe
    )
