"""Reading the change log back: the current offset, and one hashtag's changes after an offset.

A resuming subscriber subscribes to the live channel first and reads here second, so every
change is in the backlog, or arrives live, or both (then the offsets tell them apart).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.changelog.record import change_from_row, change_tags, changes
from app.models import ChangeHorizon
from app.pubsub.change import Change

log = logging.getLogger(__name__)

horizons = ChangeHorizon.__table__  # type: ignore[attr-defined]
ALL_TAGS = ""  # the horizon row of pruning by age, which covers every hashtag
TAGS_PER_QUERY = 500


@dataclass(frozen=True, slots=True)
class Backlog:
    offset: int  # the log's current end
    recovered: bool  # False: what was asked for is no longer (or not yet) in the log
    changes: list[Change] = field(default_factory=list)
    # Per post of changes, the newest version the subscription got (or gets) live through
    # the tags it already held: an older one from the backlog would go back in time.
    superseded: dict[int, int] = field(default_factory=dict)


class ChangeLog:
    def __init__(self, engine: AsyncEngine, max_backlog: int) -> None:
        self._engine = engine
        # A longer backlog would not fit the connection's queue: the client reloads instead.
        self._max_backlog = max_backlog
        self._postgresql = engine.dialect.name == "postgresql"

    async def read(
        self, tag: str, since: int | None, held: dict[str, int] | None = None
    ) -> Backlog:
        """The current offset and, when since is given, tag's changes after it, in order.
        held: the tags the subscription already follows, each with its floor."""
        if since is None:  # a plain subscribe: one query, no snapshot to hold
            async with self._engine.connect() as conn:
                current, _pruned = await self.end(conn)
            return Backlog(current, recovered=True)
        async with self._engine.connect() as conn:
            if self._postgresql:
                # One snapshot for the horizon and the rows, so a prune in between cannot
                # take rows away from a backlog already declared complete.
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                backlog = await self._read(conn, tag, since)
                if not held or not backlog.changes:
                    return backlog
                pks = {change.pk for change in backlog.changes}
                superseded = await self._newest_live(conn, pks, held, backlog.offset)
                return Backlog(backlog.offset, backlog.recovered, backlog.changes, superseded)

    @staticmethod
    async def end(conn: AsyncConnection) -> tuple[int, int]:
        """The log's current end, and up to where pruning by age reached."""
        pruned_upto = (
            select(horizons.c.pruned_upto).where(horizons.c.tag == ALL_TAGS).scalar_subquery()
        )
        newest, pruned = (await conn.execute(select(func.max(changes.c.id), pruned_upto))).one()
        return max(newest or 0, pruned or 0), pruned or 0

    async def _read(self, conn: AsyncConnection, tag: str, since: int) -> Backlog:
        current, pruned = await self.end(conn)
        tag_pruned = (
            await conn.execute(select(horizons.c.pruned_upto).where(horizons.c.tag == tag))
        ).scalar() or 0
        if since > current or since < max(pruned, tag_pruned):
            return Backlog(current, recovered=False)
        rows = (
            await conn.execute(
                select(changes)
                .join(change_tags, change_tags.c.change_id == changes.c.id)
                .where(change_tags.c.tag == tag, change_tags.c.change_id > since)
                .order_by(change_tags.c.change_id)
                .limit(self._max_backlog + 1)
            )
        ).all()
        if len(rows) > self._max_backlog:
            return Backlog(current, recovered=False)
        return Backlog(current, recovered=True, changes=[change_from_row(row) for row in rows])

    @staticmethod
    async def _newest_live(
        conn: AsyncConnection, pks: set[int], held: dict[str, int], end: int
    ) -> dict[int, int]:
        """Per post, the newest version up to end that touched a held tag above its floor:
        the hub hands those to the subscription live (or did already)."""
        above_floor = or_(
            *(
                and_(change_tags.c.tag == tag, change_tags.c.change_id > floor)
                for tag, floor in held.items()
            )
        )
        rows = await conn.execute(
            select(changes.c.post_id, func.max(changes.c.version))
            .join(change_tags, change_tags.c.change_id == changes.c.id)
            .where(changes.c.post_id.in_(sorted(pks)), changes.c.id <= end, above_floor)
            .group_by(changes.c.post_id)
        )
        return {int(pk): int(version) for pk, version in rows}

    async def read_tags(
        self, tags: frozenset[str], since: int, limit: int = 10_000
    ) -> list[Change]:
        """Changes after since touching any of tags, in offset order (at most limit)."""
        ordered = sorted(tags)
        found: dict[int, Change] = {}
        async with self._engine.connect() as conn:
            for start in range(0, len(ordered), TAGS_PER_QUERY):
                chunk = ordered[start : start + TAGS_PER_QUERY]
                matching = (
                    select(change_tags.c.change_id)
                    .where(change_tags.c.tag.in_(chunk), change_tags.c.change_id > since)
                    .distinct()
                    .scalar_subquery()
                )
                rows = await conn.execute(
                    select(changes)
                    .where(changes.c.id.in_(matching))
                    .order_by(changes.c.id)
                    .limit(limit)
                )
                for row in rows:
                    found[row.id] = change_from_row(row)
        if len(found) >= limit:
            log.warning("catch-up capped at %d changes after offset %d", limit, since)
        return [found[offset] for offset in sorted(found)[:limit]]
