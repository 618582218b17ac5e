"""PostgreSQL's LISTEN/NOTIFY as the relay's doorbell.

The change-log trigger sends NOTIFY livepost_changes for every change written outside the
service (delivered when that transaction commits), so the relay publishes plain-SQL changes
at once instead of at its next round, and can poll rarely otherwise. One dedicated asyncpg
connection per worker; while it is down the relay simply polls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "livepost_changes"  # alembic/versions/0002_change_log.py notifies it
RETRY_SECONDS = 2.0


class Doorbell:
    def __init__(self, database_url: str, ring: asyncio.Event) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._ring = ring
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen_forever(self) -> None:
        while True:
            try:
                connection = await asyncpg.connect(self._dsn, timeout=5)
            except Exception as error:
                log.debug("change-log listener cannot connect: %r", error)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            try:
                await self._listen(connection)
            except Exception as error:
                log.debug("change-log listener lost: %r", error)
            finally:
                await _close(connection)
            await asyncio.sleep(RETRY_SECONDS)

    async def _listen(self, connection: Any) -> None:
        """Until the connection is lost."""
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_termination(_connection: Any) -> None:
            if not lost.done():
                lost.set_result(None)

        connection.add_termination_listener(on_termination)
        await connection.add_listener(CHANNEL, self._on_notify)
        self.listening = True
        try:
            # Whatever was notified while nobody listened: have a look now.
            self._ring.set()
            await lost
        finally:
            self.listening = False

    def _on_notify(self, *_args: Any) -> None:
        self._ring.set()


async def _close(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), timeout=2)
    except Exception:
        connection.terminate()
