"""Change records: filing one under its hashtags (SQLite), and reading one as a Change.

The triggers (alembic/versions/0002_change_log.py) write the change row themselves, so plain
SQL is logged too. The service knows the hashtags already and files the change under them in
the same transaction, so a resuming reader finds it as soon as it is committed (on
PostgreSQL the trigger does the filing: app/posts/statements.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.models import ChangeTag, PostChange
from app.posts.hashtags import extract_hashtags
from app.posts.public import PostData, post_data
from app.pubsub.change import Change

changes = PostChange.__table__  # type: ignore[attr-defined]
change_tags = ChangeTag.__table__  # type: ignore[attr-defined]


@cache
def _tag_latest(count: int) -> TextClause:
    # The newest change is this transaction's: whoever logs a change holds the log until it
    # commits (an advisory lock on PostgreSQL, the write lock on SQLite).
    tags = " UNION ALL ".join(f"SELECT CAST(:t{i} AS VARCHAR(255)) AS tag" for i in range(count))
    return text(
        "INSERT INTO change_tags (change_id, tag) "
        f"SELECT m.id, t.tag FROM (SELECT max(id) AS id FROM post_changes) AS m, ({tags}) AS t "
        "RETURNING change_id"
    ).bindparams(*(bindparam(f"t{i}") for i in range(count)))


async def tag_latest_change(conn: AsyncConnection, tags: frozenset[str]) -> int:
    """Index the change just logged in this transaction under tags; returns its offset."""
    ordered = sorted(tags)
    result = await conn.execute(
        _tag_latest(len(ordered)), {f"t{i}": tag for i, tag in enumerate(ordered)}
    )
    offset = result.scalars().first()
    if offset is None:  # the triggers of migration 0002 are missing
        raise RuntimeError("no change was logged for this write")
    return int(offset)


_LATEST = text("SELECT max(id) FROM post_changes")


async def latest_change(conn: AsyncConnection) -> int:
    """The offset of the change just logged in this transaction (one with no hashtag: nothing
    to file it under, but the fast path still marks it, or the watermark would wait for it)."""
    offset = (await conn.execute(_LATEST)).scalar()
    if offset is None:  # the triggers of migration 0002 are missing
        raise RuntimeError("no change was logged for this write")
    return int(offset)


# SQLite's triggers cannot tell who writes; the writer says so in the same transaction.
_FLAG_LATEST_EXTERNAL = text(
    "UPDATE post_changes SET external = 1 WHERE id = (SELECT max(id) FROM post_changes)"
)


async def flag_latest_external(conn: AsyncConnection) -> None:
    """Flag the change just logged in this transaction (SQLite) as one no fast path will
    publish: the relay publishes it at its next round instead of after its grace."""
    await conn.execute(_FLAG_LATEST_EXTERNAL)


def change_from_row(row: Any) -> Change:
    """A logged change as the broker carries it, hashtags derived from the bodies."""
    old = extract_hashtags(row.old_body) if row.old_body is not None else frozenset()
    new = extract_hashtags(row.new_body) if row.new_body is not None else frozenset()
    if row.action == "delete":
        data: PostData = {"pk": row.post_id}
    else:
        data = post_data(row.post_id, row.author_id, row.new_body, row.created_at, row.version)
    return Change(
        offset=row.id,
        pk=row.post_id,
        version=row.version,
        old_tags=old,
        new_tags=new,
        data_json=orjson.dumps(data).decode(),
    )
