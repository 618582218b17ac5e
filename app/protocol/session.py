"""One WebSocket connection's protocol state: who it is, its subscriptions, its dispatch.

Requests are handled one at a time, in order. While one is in progress the outgoing queue
holds back events, so the reply to a write always precedes that write's own event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from app.accounts.service import AccountService, Identity
from app.changelog.reader import ChangeLog
from app.changelog.resume import Subscribed, subscribe_from
from app.config import Settings
from app.db import is_unavailable
from app.logs import bind_log_fields
from app.posts.service import PostService
from app.posts.validation import FieldErrors
from app.protocol.actions import ACTIONS, ANONYMOUS_ACTIONS
from app.protocol.admission import Ticket
from app.protocol.envelope import FrameError, decode_frame, dumps, reply
from app.protocol.errors import (
    ACTION_MISSING,
    NOT_TEXT,
    SERVER_ERROR,
    THROTTLED,
    TOO_MANY_CONNECTIONS,
    UNAVAILABLE,
    ProtocolError,
    field_error,
    method_not_allowed,
    permission_denied,
)
from app.protocol.outgoing import Outgoing
from app.protocol.throttle import TokenBucket
from app.pubsub.broker import BrokerUnavailable
from app.pubsub.hub import Hub, Subscription

log = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 1008


class Session:
    def __init__(
        self,
        posts: PostService,
        accounts: AccountService,
        hub: Hub,
        changelog: ChangeLog,
        outgoing: Outgoing,
        identity: Identity | None,
        *,
        settings: Settings,
        ticket: Ticket | None = None,
        close_connection: Callable[[int], None] = lambda _code: None,
    ) -> None:
        self.posts = posts
        self.accounts = accounts
        self.hub = hub
        self.changelog = changelog
        self.outgoing = outgoing
        self.identity = identity
        self.settings = settings
        self._ticket = ticket
        self._close_connection = close_connection
        self._bucket = TokenBucket(settings.ws_rate_per_second, settings.ws_rate_burst)
        self._throttled = 0  # consecutive 429 replies
        # True while a request is being answered; a stopping worker waits for it to end
        # (through a future made only then: an idle socket keeps no Event for hours).
        self._busy = False
        self._idle_waiter: asyncio.Future[None] | None = None
        self._subscriptions: dict[tuple[str | None, str], Subscription] = {}
        # Set per request: the subscription key of the request being handled.
        self._key: tuple[str | None, str] = (None, "null")

    @property
    def user_id(self) -> int:
        assert self.identity is not None  # guarded by the permission check
        return self.identity.user_id

    async def receive(self, text: str | None) -> None:
        """Answer one frame (None for a binary one). Never raises: every input gets a reply."""
        self._busy = True
        self.outgoing.hold()
        try:
            try:
                answer = await self._answer(text)
            except Exception:
                log.exception("unexpected failure answering a frame")
                answer = reply(None, None, 500, errors=[SERVER_ERROR])
            self.outgoing.put_reply(answer)
        finally:
            self.outgoing.release()
            self._busy = False
            if self._idle_waiter is not None and not self._idle_waiter.done():
                self._idle_waiter.set_result(None)

    async def wait_idle(self) -> None:
        """Return once no request is being answered."""
        if self._busy:
            self._idle_waiter = asyncio.get_running_loop().create_future()
            await self._idle_waiter

    async def _answer(self, text: str | None) -> str:
        # Every frame costs a token, garbage included, so nothing floods around the limit.
        if not self._bucket.take():
            return self._throttle(text)
        self._throttled = 0
        if text is None:
            return reply(None, None, 400, errors=[NOT_TEXT])
        try:
            frame = decode_frame(text)
        except FrameError as error:
            request = error.request
            return reply(
                request.get("action"),
                request.get("request_id"),
                error.error.status,
                errors=error.error.errors,
                stream=error.stream,
            )
        request = frame.request
        action, request_id = request.get("action"), request.get("request_id")
        self._key = (
            None if frame.stream is None else dumps(frame.stream),
            dumps(request_id),
        )
        try:
            data, status = await self._dispatch(action, request)
            return reply(action, request_id, status, data, stream=frame.stream)
        except ProtocolError as error:
            return reply(action, request_id, error.status, errors=error.errors, stream=frame.stream)

    def _throttle(self, text: str | None) -> str:
        """429 for a request over the rate; a client that keeps flooding is disconnected."""
        action = request_id = stream = None
        if text is not None:  # echo what can be read of the request, for the client's sake
            try:
                frame = decode_frame(text)
                request, stream = frame.request, frame.stream
            except FrameError as error:
                request, stream = error.request, error.stream
            action, request_id = request.get("action"), request.get("request_id")
        self._throttled += 1
        if self._throttled >= self.settings.ws_flood_close_after:
            log.warning(
                "closing a flooding connection after %d throttled requests", self._throttled
            )
            self._close_connection(CLOSE_POLICY_VIOLATION)
        return reply(action, request_id, 429, errors=[THROTTLED], stream=stream)

    async def _dispatch(self, action: Any, request: dict[str, Any]) -> tuple[Any, int]:
        if "action" not in request:
            raise ProtocolError(405, [ACTION_MISSING])
        if self.identity is not None and self.identity.expires_at <= time.time():
            self.identity = None  # an expired token makes the connection anonymous again
        # Permissions come before the action lookup, as in DCRF.
        if self.identity is None and not (isinstance(action, str) and action in ANONYMOUS_ACTIONS):
            raise permission_denied()
        handler = ACTIONS.get(action) if isinstance(action, str) else None
        if handler is None:
            raise method_not_allowed(action)
        try:
            return await handler(self, request)
        except ProtocolError:
            raise
        except FieldErrors as error:
            raise ProtocolError(400, [error.errors]) from None
        except BrokerUnavailable:
            raise ProtocolError(503, [UNAVAILABLE]) from None
        except Exception as error:
            if is_unavailable(error):
                log.warning("action %r: database unavailable: %r", action, error)
                raise ProtocolError(503, [UNAVAILABLE]) from None
            log.exception("action %r failed", action)
            raise ProtocolError(500, [SERVER_ERROR]) from None

    async def authenticate(self, token: object) -> bool:
        identity = await self.accounts.identify(token) if isinstance(token, str) else None
        if identity is None:
            return False  # the connection stays as it was
        if self._ticket is not None and not self._ticket.switch_user(identity.user_id):
            raise ProtocolError(429, [TOO_MANY_CONNECTIONS])
        self.identity = identity
        bind_log_fields(user_id=identity.user_id)
        return True

    async def subscribe(self, tag: str, since: int | None = None) -> Subscribed:
        """Subscribe under this request's id; with since, missed changes come first."""
        subscription = self._subscriptions.get(self._key)
        held = sum(len(s.tags) for s in self._subscriptions.values())
        if (subscription is None or tag not in subscription.tags) and (
            held >= self.settings.ws_max_subscriptions
        ):
            limit = self.settings.ws_max_subscriptions
            raise field_error(
                "hashtag", f"Ensure this connection has no more than {limit} subscriptions."
            )
        if subscription is None:
            stream_json, request_id_json = self._key
            subscription = Subscription(request_id_json, stream_json, self.outgoing.put_event)
            self._subscriptions[self._key] = subscription
        try:
            return await subscribe_from(self.hub, self.changelog, subscription, tag, since)
        finally:
            if not subscription.tags:
                self._subscriptions.pop(self._key, None)

    async def unsubscribe(self, tag: str) -> None:
        """From the subscription of this request_id when it holds tag, else from all of them."""
        own = self._subscriptions.get(self._key)
        targets = (
            [own] if own is not None and tag in own.tags else list(self._subscriptions.values())
        )
        for subscription in targets:
            await self.hub.unsubscribe(subscription, tag)
        for key, subscription in list(self._subscriptions.items()):
            if not subscription.tags:
                del self._subscriptions[key]

    def close(self) -> None:
        """The connection is gone: release its subscriptions."""
        for subscription in self._subscriptions.values():
            self.hub.discard(subscription)
        self._subscriptions.clear()
