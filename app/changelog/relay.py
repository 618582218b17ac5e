"""The relay: publishes logged changes the fast path did not, and prunes the log.

The service publishes each change right after its commit and tells the relay, which marks
those rows published in batches. Whatever stays unpublished past a grace period (the worker
died between commit and publish, the broker was down) or has no fast path coming (plain SQL,
or a CLI command without Redis: flagged `external`) is published here, in offset order.
Every worker runs a relay; on PostgreSQL they share the work through FOR UPDATE SKIP LOCKED
and a claim that expires, so a relay that dies mid-batch is taken over. A change may be
published twice; the hubs drop the second copy by its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.changelog.reader import ALL_TAGS, horizons
from app.changelog.record import change_from_row, change_tags, changes
from app.changelog.wakeup import Doorbell
from app.config import Settings
from app.db import begin_write
from app.pubsub.broker import Broker
from app.pubsub.change import Change
from app.pubsub.channels import channel_for

log = logging.getLogger(__name__)

BATCH = 500
# Spelled as the partial index ix_post_changes_unpublished is, so both databases use it.
UNPUBLISHED = text("NOT published")
PRUNE_BATCH = 5000


class Relay:
    def __init__(self, engine: AsyncEngine, broker: Broker, settings: Settings) -> None:
        self._engine = engine
        self._broker = broker
        self._prefix = settings.channel_prefix
        self._interval = settings.relay_interval_seconds
        self._grace = settings.relay_grace_seconds
        self._lease = settings.relay_lease_seconds
        self._retention = settings.changelog_retention_seconds
        self._per_tag = settings.changelog_max_per_hashtag
        self._prune_every = settings.changelog_prune_interval_seconds
        self._postgresql = engine.dialect.name == "postgresql"
        # INSERT with ON CONFLICT, in the database's own dialect.
        self._insert = pg_insert if self._postgresql else sqlite_insert
        self._marks: list[int] = []
        self._task: asyncio.Task[None] | None = None
        # Rung by PostgreSQL's NOTIFY for changes made outside the service.
        self._ring = asyncio.Event()
        self._doorbell = Doorbell(settings.database_url, self._ring) if self._postgresql else None
        self.relayed = 0  # changes this relay published (for operators and tests)

    def published(self, offset: int) -> None:
        """The fast path published this change; it is marked in the next batch."""
        self._marks.append(offset)

    @property
    def listening(self) -> bool:
        """True while PostgreSQL's NOTIFY can wake this relay."""
        return self._doorbell is not None and self._doorbell.listening

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        if self._doorbell is not None:
            self._doorbell.start()

    async def stop(self) -> None:
        if self._doorbell is not None:
            await self._doorbell.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush_marks()
        except Exception as error:  # the relay of another worker, or the next start, does it
            log.warning("could not mark published changes on stop: %r", error)

    async def _run(self) -> None:
        next_prune = time.monotonic()
        failing = False
        while True:
            try:
                await self.flush_marks()
                while await self.relay_once() == BATCH:
                    pass
                if time.monotonic() >= next_prune:
                    await self.prune()
                    next_prune = time.monotonic() + self._prune_every
                if failing:
                    log.warning("change relay working again")
                    failing = False
            except Exception as error:
                # The database or the broker is away: try again next round (said once).
                if not failing:
                    log.warning("change relay round failed, retrying: %r", error)
                    failing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._ring.wait()
            self._ring.clear()

    async def flush_marks(self) -> None:
        marks, self._marks = self._marks, []
        if not marks:
            return
        try:
            async with self._engine.connect() as conn:
                await begin_write(conn)
                async with conn.begin():
                    await self._mark_published(conn, marks)
        except BaseException:
            self._marks[:0] = marks
            raise

    async def _mark_published(self, conn: AsyncConnection, offsets: list[int]) -> None:
        await _set(conn, offsets, published=True)

    async def relay_once(self) -> int:
        """Publish one batch of due changes; returns how many were due."""
        now = time.time()
        due = (
            UNPUBLISHED,
            or_(changes.c.external, changes.c.changed_at < now - self._grace),
            or_(changes.c.relay_after.is_(None), changes.c.relay_after < now),
        )
        # Mostly there is nothing to do: find that out without taking any lock.
        async with self._engine.connect() as conn:
            if (await conn.execute(select(changes.c.id).where(*due).limit(1))).first() is None:
                return 0
        async with self._engine.connect() as conn:
            await begin_write(conn)
            async with conn.begin():
                rows = (
                    await conn.execute(
                        select(changes)
                        .where(*due)
                        .order_by(changes.c.id)
                        .limit(BATCH)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                if not rows:
                    return 0
                batch = [change_from_row(row) for row in rows]
                # Indexed and claimed before anything is published: a resuming reader that
                # missed the live copy finds the change in its backlog.
                pairs = [{"tag": t, "change_id": c.offset} for c in batch for t in c.tags]
                if pairs:
                    await conn.execute(self._insert(change_tags).on_conflict_do_nothing(), pairs)
                await _set(conn, [c.offset for c in batch], relay_after=now + self._lease)
        done: list[int] = []
        try:
            for change in batch:
                if change.tags:
                    await self._publish(change)
                    self.relayed += 1
                done.append(change.offset)
        finally:
            # What was published is marked; the rest is released for the next round.
            rest = [c.offset for c in batch[len(done) :]]
            async with self._engine.connect() as conn:
                await begin_write(conn)
                async with conn.begin():
                    if done:
                        await self._mark_published(conn, done)
                    if rest:
                        await _set(conn, rest, relay_after=None)
        log.info("relayed %d logged changes up to offset %d", len(done), done[-1])
        return len(rows)

    async def _publish(self, change: Change) -> None:
        channels = [channel_for(self._prefix, tag) for tag in sorted(change.tags)]
        await self._broker.publish_many(channels, change.encode())

    async def prune(self) -> None:
        """Drop changes older than the retention, and all but the newest N per hashtag."""
        async with self._engine.connect() as conn:
            await begin_write(conn)
            async with conn.begin():
                upto = await self._prune_by_age(conn, time.time() - self._retention)
                if upto:
                    await self._advance_horizon(conn, ALL_TAGS, upto)
                crowded = (
                    await conn.execute(
                        select(change_tags.c.tag)
                        .group_by(change_tags.c.tag)
                        .having(func.count() > self._per_tag)
                    )
                ).scalars()
                for tag in list(crowded):
                    await self._prune_tag(conn, tag)

    async def _prune_by_age(self, conn: AsyncConnection, cutoff: float) -> int:
        """Delete the oldest changes while they are older than cutoff; the last id deleted."""
        upto = 0
        while True:
            rows = (
                await conn.execute(
                    select(changes.c.id, changes.c.changed_at)
                    .where(changes.c.id > upto)
                    .order_by(changes.c.id)
                    .limit(PRUNE_BATCH)
                )
            ).all()
            # Offsets follow commit order: the old ones come first.
            old = 0
            for row in rows:
                if row.changed_at >= cutoff:
                    break
                upto, old = row.id, old + 1
            if old < PRUNE_BATCH:
                break
        if upto:
            await conn.execute(delete(change_tags).where(change_tags.c.change_id <= upto))
            await conn.execute(delete(changes).where(changes.c.id <= upto))
        return upto

    async def _prune_tag(self, conn: AsyncConnection, tag: str) -> None:
        upto = (
            await conn.execute(
                select(change_tags.c.change_id)
                .where(change_tags.c.tag == tag)
                .order_by(change_tags.c.change_id.desc())
                .offset(self._per_tag)
                .limit(1)
            )
        ).scalar()
        if upto is None:
            return
        await conn.execute(
            delete(change_tags).where(
                and_(change_tags.c.tag == tag, change_tags.c.change_id <= upto)
            )
        )
        await self._advance_horizon(conn, tag, upto)

    async def _advance_horizon(self, conn: AsyncConnection, tag: str, upto: int) -> None:
        statement = self._insert(horizons).values(tag=tag, pruned_upto=upto)
        bigger = func.greatest if self._postgresql else func.max
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[horizons.c.tag],
                set_={
                    "pruned_upto": bigger(horizons.c.pruned_upto, statement.excluded.pruned_upto)
                },
            )
        )


async def _set(conn: AsyncConnection, offsets: list[int], **values: Any) -> None:
    """Set columns of the changes at these offsets."""
    await conn.execute(
        update(changes).where(changes.c.id.in_(bindparam("ids", expanding=True))).values(**values),
        {"ids": offsets},
    )
