"""The resume watermark: the highest offset at or below which every change has been published.

Offsets follow commit order, but a change's publish can come late (a concurrent commit on
another worker, a worker cut off from the broker, one killed between commit and publish), so
a client cannot resume from the highest offset it saw. Every change at or below the lowest
unpublished one has been published (or will never be: rolled back, pruned), and the fast
path's marks reach the log within one round, so the log tells it in one indexed query.

Every worker's relay computes it each round and publishes it on the broker's watermark
channel, after the publishes it accounts for: a hub takes it from there, behind those
changes (app/pubsub/hub.py). No query per event or per subscribe.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.changelog.reader import ChangeLog
from app.changelog.record import changes
from app.changelog.relay import UNPUBLISHED, Relay
from app.pubsub.broker import Broker
from app.pubsub.channels import watermark_channel

log = logging.getLogger(__name__)


async def read_watermark(engine: AsyncEngine) -> int:
    """The watermark as the log has it now."""
    async with engine.connect() as conn:
        # The end first: every change up to it has committed, so the second read sees each
        # of them that is still unpublished (read the other way round, a change committed in
        # between would count as published).
        end, _pruned = await ChangeLog.end(conn)
        lowest = (await conn.execute(select(func.min(changes.c.id)).where(UNPUBLISHED))).scalar()
        return end if lowest is None else min(end, int(lowest) - 1)


# Rounds between publishes of an unchanged watermark, so a hub that missed one (its broker
# connection was down) does not wait for the next write.
REPEAT_AFTER = 10


class WatermarkPublisher:
    """Each round: mark what the fast path published, read the watermark, and publish it
    when it moved (any worker's value is right; hubs keep the highest)."""

    def __init__(
        self, engine: AsyncEngine, broker: Broker, relay: Relay, prefix: str, interval: float
    ) -> None:
        self._engine = engine
        self._broker = broker
        self._relay = relay
        self._channel = watermark_channel(prefix)
        self._interval = interval
        self._published = -1
        self._unchanged = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def publish_once(self) -> int:
        await self._relay.flush_marks()
        safe = await read_watermark(self._engine)
        if safe != self._published or self._unchanged >= REPEAT_AFTER:
            await self._broker.publish(self._channel, str(safe).encode())
            self._published, self._unchanged = safe, 0
        else:
            self._unchanged += 1
        return safe

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.publish_once()
                if failing:
                    log.info("publishing the resume watermark works again")
                    failing = False
            except Exception as error:
                # The database or the broker is away: hubs keep the last value meanwhile.
                if not failing:
                    log.warning("publishing the resume watermark failed, retrying: %r", error)
                    failing = True
            await asyncio.sleep(self._interval)
