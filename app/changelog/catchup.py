"""After a broker outage: read back, from the change log, what this worker's hub missed.

While the broker connection was down, changes were committed (and published, by their writer
or later by a relay) without reaching this worker. Once its subscriptions are confirmed
again, everything published from then on arrives live; this reads what came before, for
the hashtags this worker's connections follow, and hands it to the hub in offset order.
"""

from __future__ import annotations

import asyncio
import logging

from app.changelog.reader import ChangeLog
from app.pubsub.hub import Hub

log = logging.getLogger(__name__)

ATTEMPTS = 20
RETRY_SECONDS = 0.5


class CatchUp:
    def __init__(self, hub: Hub, changelog: ChangeLog) -> None:
        self._hub = hub
        self._changelog = changelog
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self) -> None:
        """The broker is back (its on_resync hook): catch up in the background."""
        task = asyncio.get_running_loop().create_task(self.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        losses = self._hub.losses
        tags = self._hub.local_tags
        if not tags:
            self._hub.catch_up([], losses)
            return
        since = self._hub.floor()
        for attempt in range(ATTEMPTS):
            try:
                changes = await self._changelog.read_tags(tags, since)
                break
            except Exception as error:
                if attempt == ATTEMPTS - 1:
                    # Subscribers can still resume with `since`, from the watermark held since
                    # the outage (until a later catch-up succeeds).
                    log.warning("catching up after the broker outage failed: %r", error)
                    self._hub.catch_up_failed()
                    return
                await asyncio.sleep(RETRY_SECONDS)  # the database may be coming back too
        log.info("caught up %d changes after offset %d", len(changes), since)
        self._hub.catch_up(changes, losses)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
