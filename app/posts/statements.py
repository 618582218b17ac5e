"""The three write statements, per database, each getting its change logged on the way.

PostgreSQL: one hand-written statement per write. It tells the change-log trigger the
hashtags it touches (the setting livepost.tags, set inside the statement, before the trigger
runs) and returns the change's offset (currval) with the row. So the write costs no round
trip more than a plain one, and nothing runs between the write, which takes the change log's
lock, and the commit that releases it (alembic/versions/0002_change_log.py).
SQLite (one writer at a time, in-process): the statements, then the change filed under its
hashtags by the service (app/changelog/record.py).

`external`: no fast path will publish these writes (a CLI process whose in-process broker
nobody hears), so they are logged as a write from outside the service is: the relay publishes
them at its next round, without waiting out its grace. On PostgreSQL that is a write that
announces no hashtags (the trigger then flags it and sends NOTIFY, so the relays wake at once).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, text, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.changelog.record import flag_latest_external, latest_change, tag_latest_change
from app.models import Post

posts = Post.__table__  # type: ignore[attr-defined]
COLUMNS = (posts.c.id, posts.c.author_id, posts.c.body, posts.c.created_at, posts.c.version)

_ANNOUNCE = "set_config('livepost.tags', :announce, true) IS NOT NULL"
_RETURNING = (
    "RETURNING id, author_id, body, created_at, version, "
    "currval('post_changes_id_seq') AS change_offset"
)
_PG_INSERT = text(
    "INSERT INTO posts (author_id, body, created_at, updated_at, version) VALUES "
    f"(:author_id, :body, :now, CASE WHEN {_ANNOUNCE} THEN CAST(:now AS TIMESTAMPTZ) END, 1) "
    + _RETURNING
)
_PG_UPDATE = text(
    "UPDATE posts SET body = :body, version = :version, "
    f"updated_at = CASE WHEN {_ANNOUNCE} THEN CAST(:now AS TIMESTAMPTZ) END "
    f"WHERE id = :pk {_RETURNING}"
)
_PG_DELETE = text(
    f"DELETE FROM posts WHERE id = :pk AND {_ANNOUNCE} "
    "RETURNING currval('post_changes_id_seq') AS change_offset"
)

Written = tuple[Row[Any], int]  # the row as returned, the change's offset


class WriteStatements:
    def __init__(self, dialect: str, *, external: bool = False) -> None:
        self._postgresql = dialect == "postgresql"
        self._external = external

    def _announce(self, tags: frozenset[str]) -> str:
        # Anything but "tags:..." reads as a write from outside the service to the trigger.
        return "" if self._external else "tags:" + " ".join(sorted(tags))

    async def insert(
        self, engine: AsyncEngine, author_id: int, body: str, now: datetime, tags: frozenset[str]
    ) -> Written:
        if self._postgresql:
            values = {
                "author_id": author_id,
                "body": body,
                "now": now,
                "announce": self._announce(tags),
            }
            # One statement, its own transaction: the server commits it at once, so the change
            # log's lock is not held across a round trip to the client for COMMIT.
            async with engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                return self._written(await conn.execute(_PG_INSERT, values))
        statement = (
            insert(posts)
            .values(author_id=author_id, body=body, created_at=now, updated_at=now, version=1)
            .returning(*COLUMNS)
        )
        async with engine.begin() as conn:
            row = (await conn.execute(statement)).one()
            return row, await self._file(conn, tags)

    async def update(
        self,
        conn: AsyncConnection,
        pk: int,
        body: str,
        version: int,
        now: datetime,
        tags: frozenset[str],
    ) -> Written:
        if self._postgresql:
            values = {
                "pk": pk,
                "body": body,
                "version": version,
                "now": now,
                "announce": self._announce(tags),
            }
            return self._written(await conn.execute(_PG_UPDATE, values))
        statement = (
            update(posts)
            .where(posts.c.id == pk)
            .values(body=body, version=version, updated_at=now)
            .returning(*COLUMNS)
        )
        row = (await conn.execute(statement)).one()
        return row, await self._file(conn, tags)

    async def delete(self, conn: AsyncConnection, pk: int, tags: frozenset[str]) -> int:
        if self._postgresql:
            result = await conn.execute(_PG_DELETE, {"pk": pk, "announce": self._announce(tags)})
            return int(result.one().change_offset)
        await conn.execute(sql_delete(posts).where(posts.c.id == pk))
        return await self._file(conn, tags)

    @staticmethod
    def _written(result: Any) -> Written:
        row = result.one()
        return row, int(row.change_offset)

    async def _file(self, conn: AsyncConnection, tags: frozenset[str]) -> int:
        if self._external:
            await flag_latest_external(conn)
        return await (tag_latest_change(conn, tags) if tags else latest_change(conn))
