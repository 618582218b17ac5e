"""The objects one worker owns (engine, broker, hub, services) and their start and stop."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.accounts.service import AccountService
from app.accounts.throttle import AccountThrottles
from app.changelog.catchup import CatchUp
from app.changelog.reader import ChangeLog
from app.changelog.relay import Relay
from app.changelog.watermark import WatermarkPublisher, read_watermark
from app.config import Settings
from app.db import make_engine
from app.posts.service import PostService
from app.protocol.admission import Admission
from app.pubsub import control
from app.pubsub.broker import Broker, make_broker
from app.pubsub.channels import control_channel
from app.pubsub.hub import Hub

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    broker: Broker
    hub: Hub
    relay: Relay
    watermark: WatermarkPublisher
    changelog: ChangeLog
    catchup: CatchUp
    posts: PostService
    accounts: AccountService
    throttles: AccountThrottles
    admission: Admission

    @classmethod
    async def start(cls, settings: Settings, *, run_relay: bool = False) -> Runtime:
        """Build and connect everything; nothing connects before this is called. Servers run
        the relay; a CLI command that writes once needs none (the servers' relays cover it).

        A write counts as published only when a broker its subscribers hear took it: Redis,
        or the in-process broker of a server (its own subscribers). A CLI command's in-process
        broker reaches nobody, so its writes go to the servers' relays through the log."""
        secret = settings.secret  # refuses to start without one outside the embedded default
        engine = make_engine(settings)
        broker = make_broker(settings)
        hub = Hub(broker, settings.channel_prefix)
        await hub.start(await _first_watermark(engine) if run_relay else 0)
        relay = Relay(engine, broker, settings)
        watermark = WatermarkPublisher(
            engine, broker, relay, settings.channel_prefix, settings.watermark_interval_seconds
        )
        if run_relay:
            relay.start()
            watermark.start()
        # A backlog must fit the connection's queue, with room for live events.
        changelog = ChangeLog(engine, max_backlog=settings.ws_queue_size // 2)
        catchup = CatchUp(hub, changelog)
        broker.on_lost = hub.broker_lost
        broker.on_resync = catchup.schedule
        runtime = cls(
            settings=settings,
            engine=engine,
            broker=broker,
            hub=hub,
            relay=relay,
            watermark=watermark,
            changelog=changelog,
            catchup=catchup,
            posts=PostService(
                engine,
                broker,
                settings.channel_prefix,
                on_published=relay.published,
                kill_before_publish=settings.fault_kill_before_publish,
                fast_path=run_relay or settings.redis_url is not None,
            ),
            accounts=AccountService(engine, secret, settings.token_lifetime_minutes * 60),
            throttles=AccountThrottles.from_settings(settings),
            admission=Admission(
                settings.ws_max_connections_per_ip, settings.ws_max_connections_per_user
            ),
        )
        hub.on_control = runtime.on_control
        return runtime

    def on_control(self, message: bytes) -> None:
        """A control message from any worker (this one included)."""
        decoded = control.decode(message)
        if decoded is None:
            log.warning("ignored a control message this worker does not understand")
            return
        order, user_id = decoded
        if order == control.CLOSE_USER:
            closed = self.admission.close_user(user_id)
            if closed:
                log.info("closed %d connections of deactivated user %d", closed, user_id)

    async def deactivate_user(self, user_id: int) -> bool:
        """Refuse the user's tokens from now on and close their sockets and event streams
        on every worker; False when there is no such user. Raises BrokerUnavailable when the
        other workers could not be told (the user is deactivated all the same, and this
        worker's connections are closed)."""
        if not await self.accounts.set_flags(user_id, is_active=False):
            return False
        # Here at once, whatever the broker does; the message closes the others (and, on
        # its way back, finds nothing left here).
        self.admission.close_user(user_id)
        await self.broker.publish(
            control_channel(self.settings.channel_prefix), control.close_user(user_id)
        )
        return True

    async def stop_serving(self) -> None:
        """Graceful stop, before the server's own shutdown: refuse new sockets, let each live
        one finish its request and close with 1001, and let every write that committed
        finish its publish."""
        grace = self.settings.shutdown_grace_seconds
        await self.admission.close_all(grace)
        await self.posts.drain(grace)

    async def close(self) -> None:
        await self.posts.drain(self.settings.shutdown_grace_seconds)
        await self.watermark.stop()
        await self.relay.stop()
        await self.catchup.close()
        await self.hub.close()  # drops the broker connection and with it every channel
        await self.engine.dispose()

    async def database_ready(self) -> bool:
        try:
            async with asyncio.timeout(self.settings.db_timeout):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True


async def _first_watermark(engine: AsyncEngine) -> int:
    """The watermark a worker starts with; later ones come through the broker."""
    try:
        return await read_watermark(engine)
    except Exception as error:  # the database is away: resumes re-send more until it is back
        log.warning("reading the resume watermark failed: %r", error)
        return 0
