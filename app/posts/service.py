"""The one write path: validate, authorise, commit, then publish one message per hashtag.

REST, WebSocket and CLI writes all come through PostService, so every committed change
produces its events, and a rolled-back or no-op write produces none.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import begin_write
from app.models import Post, utcnow
from app.posts.hashtags import extract_hashtags
from app.posts.public import PostData, post_data, post_list
from app.posts.statements import COLUMNS, WriteStatements
from app.posts.validation import clean_body, is_storable
from app.pubsub.broker import Broker
from app.pubsub.change import Change
from app.pubsub.channels import channel_for

log = logging.getLogger(__name__)

posts = Post.__table__  # type: ignore[attr-defined]

T = TypeVar("T")
UNCHANGED: Any = object()  # a patch without body
ANY_AUTHOR = None  # an admin's write: no ownership check


class PostNotFound(Exception):
    """No such post, or not one the caller may change (DRF's queryset filter gives 404)."""


class PostService:
    def __init__(
        self,
        engine: AsyncEngine,
        broker: Broker,
        channel_prefix: str,
        *,
        on_published: Callable[[int], None] = lambda _offset: None,
        kill_before_publish: str = "",
        fast_path: bool = True,
    ) -> None:
        """fast_path=False: nobody hears this broker (the in-process one of a CLI command), so
        publishing on it would publish nothing. The writes are left in the change log, flagged
        for the relays of the running servers, and never reported published from here."""
        self._engine = engine
        self._broker = broker
        self._prefix = channel_prefix
        # Told each offset published on the fast path, so the relay need not (app/changelog).
        self._on_published = on_published
        # Fault injection for tests: die between commit and publish on a body holding this.
        self._kill_marker = kill_before_publish
        self._fast_path = fast_path
        self._sqlite = engine.dialect.name == "sqlite"
        self._statements = WriteStatements(engine.dialect.name, external=not fast_path)
        self._writes: set[asyncio.Task[Any]] = set()

    async def _shielded(self, write: Coroutine[Any, Any, T]) -> T:
        """Run a write to its end (commit, then publish) even if its caller is cancelled,
        e.g. by a client disconnecting: nothing committed is left without its publish."""
        task = asyncio.get_running_loop().create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._write_done)
        return await asyncio.shield(task)

    def _write_done(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # marked retrieved: a cancelled caller no longer awaits it

    async def drain(self, grace: float) -> None:
        """Wait (up to grace seconds) for writes in progress to commit and publish."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=grace)

    async def list(
        self, *, body_contains: str | None = None, limit: int = 500, before: int | None = None
    ) -> list[PostData]:
        """Newest first, at most `limit`, pks below `before`, body matching case-insensitively."""
        if body_contains and not is_storable(body_contains):
            return []  # no stored body holds NUL or a lone surrogate (neither database can)
        query = select(*COLUMNS).order_by(posts.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(posts.c.id < before)
        if body_contains:
            if self._sqlite:
                # lp_lower is Python's str.lower, registered on each SQLite connection.
                query = query.where(
                    func.lp_lower(posts.c.body).contains(body_contains.lower(), autoescape=True)
                )
            else:
                query = query.where(posts.c.body.icontains(body_contains, autoescape=True))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return post_list(rows)

    async def pks_by_author(self, author_id: int) -> builtins.list[int]:
        """The pks of one author's posts (an admin deleting the account deletes them one by
        one through admin_delete, so their subscribers see each go)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(posts.c.id).where(posts.c.author_id == author_id))
            return [int(pk) for pk in rows.scalars()]

    async def get(self, pk: int) -> PostData:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(*COLUMNS).where(posts.c.id == pk))).first()
        if row is None:
            raise PostNotFound(pk)
        return _post_data(row)

    async def create(self, author_id: int, body: object) -> PostData:
        """Create a post; subscribers of its hashtags get `create`."""
        return await self._shielded(self._create(author_id, body))

    async def update(self, author_id: int, pk: int, body: object = UNCHANGED) -> PostData:
        """Replace the body (PUT passes it always, PATCH only when given)."""
        return await self._shielded(self._update(author_id, pk, body))

    async def delete(self, author_id: int, pk: int) -> None:
        """Delete a post; subscribers of its hashtags get `delete`."""
        await self._shielded(self._delete(author_id, pk))

    # An admin's writes: the same path (lock, version, commit, publish), so subscribers get
    # the same events as for the author's own; only the ownership check is left out.
    async def admin_update(self, pk: int, body: object) -> PostData:
        """Replace the body of anyone's post (the admin at /admin)."""
        return await self._shielded(self._update(ANY_AUTHOR, pk, body))

    async def admin_delete(self, pk: int) -> None:
        """Delete anyone's post (the admin at /admin)."""
        await self._shielded(self._delete(ANY_AUTHOR, pk))

    async def _create(self, author_id: int, body: object) -> PostData:
        text = clean_body(body)
        tags = extract_hashtags(text)
        row, offset = await self._statements.insert(self._engine, author_id, text, utcnow(), tags)
        post = _post_data(row)
        await self._publish(offset, post["pk"], 1, post, frozenset(), tags)
        return post

    async def _update(self, author_id: int | None, pk: int, body: object) -> PostData:
        async with self._engine.connect() as conn:
            await begin_write(conn)
            async with conn.begin():
                # The old hashtags come from the locked row, not from anything cached.
                old = await self._owned_row(conn, author_id, pk)
                # Validated after the lookup: DRF answers 404 before 400.
                text = old.body if body is UNCHANGED else clean_body(body)
                if text == old.body:
                    return _post_data(old)  # a write that changes nothing is no change
                old_tags, new_tags = extract_hashtags(old.body), extract_hashtags(text)
                row, offset = await self._statements.update(
                    conn, pk, text, old.version + 1, utcnow(), old_tags | new_tags
                )
        post = _post_data(row)
        await self._publish(offset, pk, post["version"], post, old_tags, new_tags)
        return post

    async def _delete(self, author_id: int | None, pk: int) -> None:
        async with self._engine.connect() as conn:
            await begin_write(conn)
            async with conn.begin():
                old = await self._owned_row(conn, author_id, pk)
                tags = extract_hashtags(old.body)
                offset = await self._statements.delete(conn, pk, tags)
        # A delete is the post's last version: one past its final state.
        await self._publish(offset, pk, old.version + 1, {"pk": pk}, tags, frozenset())

    async def _owned_row(
        self, conn: Any, author_id: int | None, pk: int
    ) -> Row[Any, Any, Any, Any, Any]:
        """The locked row, if author_id wrote it (ANY_AUTHOR: whoever did)."""
        row = (
            await conn.execute(select(*COLUMNS).where(posts.c.id == pk).with_for_update())
        ).first()
        if row is None or (author_id is not ANY_AUTHOR and row.author_id != author_id):
            raise PostNotFound(pk)
        return row

    async def _publish(
        self,
        offset: int,
        pk: int,
        version: int,
        data: PostData,
        old: frozenset[str],
        new: frozenset[str],
    ) -> None:
        """After commit: one message per hashtag in old | new, whatever the subscriber count.
        This is the fast path; should it not happen (the process dies, the broker is down),
        the relay publishes the logged change instead."""
        if not self._fast_path:
            return  # a server's relay publishes it; only then does it count as published
        if not old and not new:
            self._on_published(offset)  # nothing to send, and nothing to wait for either
            return
        if self._kill_marker and self._kill_marker in data.get("body", ""):
            os.kill(os.getpid(), signal.SIGKILL)
        change = Change(
            offset=offset,
            pk=pk,
            version=version,
            old_tags=old,
            new_tags=new,
            data_json=orjson.dumps(data).decode(),
        )
        channels = [channel_for(self._prefix, tag) for tag in sorted(change.tags)]
        try:
            await self._broker.publish_many(channels, change.encode())
        except Exception as error:
            # The write is committed and answered regardless; the relay will publish it.
            log.warning("publishing change %s of post %s failed: %r", offset, pk, error)
            return
        self._on_published(offset)


def _post_data(row: Any) -> PostData:
    return post_data(row.id, row.author_id, row.body, row.created_at, row.version)
