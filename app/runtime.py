"""The objects one worker owns (engine, broker, hub, services) and their start and stop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.accounts.service import AccountService
from app.accounts.throttle import AccountThrottles
from app.config import Settings
from app.db import make_engine
from app.posts.service import PostService
from app.protocol.admission import Admission
from app.pubsub.broker import Broker, make_broker
from app.pubsub.hub import Hub


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    broker: Broker
    hub: Hub
    posts: PostService
    accounts: AccountService
    throttles: AccountThrottles
    admission: Admission

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        """Build and connect everything; nothing connects before this is called."""
        secret = settings.secret  # refuses to start without one outside the embedded default
        engine = make_engine(settings)
        broker = make_broker(settings)
        hub = Hub(broker, settings.channel_prefix)
        await hub.start()
        return cls(
            settings=settings,
            engine=engine,
            broker=broker,
            hub=hub,
            posts=PostService(engine, broker, settings.channel_prefix),
            accounts=AccountService(engine, secret, settings.token_lifetime_minutes * 60),
            throttles=AccountThrottles.from_settings(settings),
            admission=Admission(
                settings.ws_max_connections_per_ip, settings.ws_max_connections_per_user
            ),
        )

    async def stop_serving(self) -> None:
        """Graceful stop, before the server's own shutdown: refuse new sockets, let each live
        one finish its request and close with 1001, and let every write that committed
        finish its publish."""
        grace = self.settings.shutdown_grace_seconds
        await self.admission.close_all(grace)
        await self.posts.drain(grace)

    async def close(self) -> None:
        await self.posts.drain(self.settings.shutdown_grace_seconds)
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
