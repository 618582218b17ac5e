"""Redis pub/sub broker: one listening connection per worker, one publishing pool.

The listener owns a raw connection with no socket timeout: redis-py's default 5 s socket
timeout turns every quiet minute into a TimeoutError. Liveness is checked explicitly instead:
after HEARTBEAT seconds of silence it sends PING, and a connection that stays silent for
another HEARTBEAT is dropped and rebuilt. On any loss it reconnects with capped backoff and
resubscribes every channel the hub still wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from app.pubsub.broker import Broker, BrokerUnavailable, MessageHandler

log = logging.getLogger(__name__)

HEARTBEAT = 5.0
CONFIRM_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 1.0


class RedisBroker(Broker):
    def __init__(self, url: str, *, heartbeat: float = HEARTBEAT) -> None:
        self._url = url
        self._heartbeat = heartbeat
        self._publisher = Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, socket_keepalive=True
        )
        self._listen_pool = ConnectionPool.from_url(
            url, socket_timeout=None, socket_connect_timeout=2, socket_keepalive=True
        )
        self._handler: MessageHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: Connection | None = None
        self._wanted: set[str] = set()
        # Per channel, the subscribe calls waiting for Redis to confirm, oldest first.
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._connected = asyncio.Event()
        self.disconnects = 0
        self.publish_failures = 0
        self.down_since: float | None = None
        self._resync_pending = False

    async def start(self, handler: MessageHandler, standing: Iterable[str] = ()) -> None:
        self._handler = handler
        self._wanted.update(standing)  # the listener subscribes them whenever it connects
        self._task = asyncio.get_running_loop().create_task(self._listen_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_connection()
        await self._publisher.aclose()
        await self._listen_pool.aclose()

    async def publish(self, channel: str, data: bytes) -> None:
        if not self._connected.is_set():
            # The listener already knows Redis is unreachable: fail fast rather than
            # make every write wait for a connect timeout.
            self.publish_failures += 1
            raise BrokerUnavailable("redis is unreachable")
        try:
            await self._publisher.publish(channel, data)
        except (RedisError, OSError) as error:
            self.publish_failures += 1
            raise BrokerUnavailable(str(error)) from error

    async def publish_many(self, channels: list[str], data: bytes) -> None:
        """One round trip: the PUBLISH commands go out pipelined (still one per channel)."""
        if len(channels) == 1:
            await self.publish(channels[0], data)
            return
        if not self._connected.is_set():
            self.publish_failures += 1
            raise BrokerUnavailable("redis is unreachable")
        try:
            async with self._publisher.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.publish(channel, data)
                await pipe.execute()
        except (RedisError, OSError) as error:
            self.publish_failures += 1
            raise BrokerUnavailable(str(error)) from error

    async def subscribe(self, channel: str) -> None:
        conn = self._conn
        if conn is None or not self._connected.is_set():
            raise BrokerUnavailable("redis is unreachable")
        self._wanted.add(channel)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, deque()).append(waiter)
        try:
            await conn.send_command("SUBSCRIBE", channel)
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await waiter
        except (RedisError, OSError, TimeoutError, BrokerUnavailable) as error:
            # The hub treats the channel as not subscribed, so neither may a reconnect.
            await self.unsubscribe(channel)
            raise BrokerUnavailable(f"subscribing to {channel} failed: {error!r}") from error
        finally:
            waiters = self._waiters.get(channel)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        conn = self._conn
        if conn is None or not self._connected.is_set():
            return  # a reconnect subscribes only what is still wanted
        try:
            await conn.send_command("UNSUBSCRIBE", channel)
        except (RedisError, OSError) as error:
            log.warning("unsubscribing from %s failed: %r", channel, error)

    async def ping(self) -> bool:
        if not self._connected.is_set():
            return False
        try:
            async with asyncio.timeout(1.0):
                return bool(await self._publisher.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for /readyz and logs."""
        return {
            "connected": self._connected.is_set(),
            "disconnects": self.disconnects,
            "publish_failures": self.publish_failures,
            "subscribed_channels": len(self._wanted),
        }

    async def _listen_forever(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                await self._connect()
                backoff = BACKOFF_FIRST
                await self._read_until_lost()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._mark_down(error)
            await self._drop_connection()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP)

    async def _connect(self) -> None:
        conn = self._listen_pool.make_connection()
        await conn.connect()
        # redis-py's parser hands pub/sub frames to a push handler (what its own PubSub
        # installs too); ours passes them back to read_response unchanged.
        conn._parser.set_pubsub_push_handler(_passthrough)
        self._conn = conn
        if self._wanted:
            # Everything the hub still needs, in one command; confirmations arrive as messages.
            await conn.send_command("SUBSCRIBE", *sorted(self._wanted))
        if self.down_since is not None:
            # Answered after every confirmation of that SUBSCRIBE: then it is time to resync.
            self._resync_pending = True
            await conn.send_command("PING")
            log.warning(
                "redis listener back after %.1f s; resubscribed %d channels",
                time.monotonic() - self.down_since,
                len(self._wanted),
            )
            self.down_since = None
        self._connected.set()

    async def _read_until_lost(self) -> None:
        conn = self._conn
        assert conn is not None
        pinged = False
        while True:
            response = await conn.read_response(timeout=self._heartbeat, push_request=True)
            if response is None:
                if pinged:
                    raise ConnectionError(f"no answer to PING within {self._heartbeat} s")
                await conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            self._dispatch(response)

    def _dispatch(self, response: Any) -> None:
        if not isinstance(response, list) or response[0] == b"pong":  # PING's answer
            if self._resync_pending:
                self._resync_pending = False
                if self.on_resync is not None:
                    self.on_resync()
            return
        kind = response[0]
        if kind == b"message":
            handler = self._handler
            if handler is not None:
                try:
                    handler(response[1].decode(), response[2])
                except Exception:
                    log.exception("handling a message on %r failed", response[1])
        elif kind == b"subscribe":
            waiters = self._waiters.get(response[1].decode())
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    def _mark_down(self, error: BaseException) -> None:
        if self._connected.is_set() or self.down_since is None:
            self.disconnects += 1
            if self.down_since is None:
                self.down_since = time.monotonic()
                if self.on_lost is not None:
                    self.on_lost()
            log.warning("redis listener lost (%r); reconnecting", error)
        self._connected.clear()
        for waiters in self._waiters.values():
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("redis connection lost"))

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)


async def _passthrough(response: Any) -> Any:
    return response
