"""The schema comes from `alembic upgrade head` and matches the models, on both databases.

Each case migrates its own database: a temporary SQLite file, or a PostgreSQL database created
for the test (next to LIVEPOST_TEST_DATABASE_URL's) and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from alembic import command
from app.config import Settings
from app.migrations import alembic_config, upgrade_to_head
from tests.cluster_support import admin_sql

PG_URL = os.environ.get("LIVEPOST_TEST_DATABASE_URL")
REQUIRE = os.environ.get("LIVEPOST_REQUIRE_SERVICES") == "1"
TIMEOUT = 60.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database of each kind; its URL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
        return
    if not PG_URL:
        if REQUIRE:
            pytest.fail("PostgreSQL is required but LIVEPOST_TEST_DATABASE_URL is unset")
        pytest.skip("set LIVEPOST_TEST_DATABASE_URL to run the PostgreSQL migrations")
    shared = Settings(database_url=PG_URL).database_url
    name = f"livepost_mig_{uuid.uuid4().hex[:12]}"
    async with asyncio.timeout(TIMEOUT):
        await admin_sql(shared, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(shared).set(database=name).render_as_string(hide_password=False)
    finally:
        async with asyncio.timeout(TIMEOUT):
            await admin_sql(shared, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _with_connection(url: str, work: Any) -> Any:
    """Run `work(sync_connection)` on a connection to url."""
    engine: AsyncEngine = create_async_engine(url)
    try:
        async with asyncio.timeout(TIMEOUT), engine.connect() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    return {
        "tables": sorted(inspector.get_table_names()),
        "posts_pk": inspector.get_pk_constraint("posts")["constrained_columns"],
        "users_pk": inspector.get_pk_constraint("users")["constrained_columns"],
        "posts_indexes": sorted(
            (index["name"], tuple(index["column_names"]), bool(index["unique"]))
            for index in inspector.get_indexes("posts")
        ),
        "users_unique": sorted(
            tuple(constraint["column_names"])
            for constraint in inspector.get_unique_constraints("users")
        )
        + sorted(
            tuple(index["column_names"])
            for index in inspector.get_indexes("users")
            if index["unique"] and not index.get("duplicates_constraint")
        ),
        "posts_foreign_keys": [
            (
                tuple(key["constrained_columns"]),
                key["referred_table"],
                key["options"].get("ondelete"),
            )
            for key in inspector.get_foreign_keys("posts")
        ],
    }


EXPECTED_SCHEMA = {
    "tables": [
        "alembic_version",
        # The change log (0002): the outbox, its hashtag index and the prune horizons.
        "change_horizons",
        "change_tags",
        "post_changes",
        "posts",
        "users",
    ],
    "posts_pk": ["id"],
    "users_pk": ["id"],
    "posts_indexes": [("ix_posts_author_id_id", ("author_id", "id"), False)],
    "users_unique": [("username",)],
    "posts_foreign_keys": [(("author_id",), "users", "CASCADE")],
}


async def _upgrade(url: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        # upgrade_to_head runs its own event loop (asyncio.run): keep it off this one.
        await asyncio.to_thread(upgrade_to_head, url)


async def _downgrade_to_base(url: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        await asyncio.to_thread(command.downgrade, alembic_config(url), "base")


async def _assert_head_matches_models(url: str) -> None:
    assert await _with_connection(url, _differences) == []
    assert await _with_connection(url, _schema) == EXPECTED_SCHEMA
    version = await _with_connection(
        url, lambda conn: conn.execute(text("SELECT version_num FROM alembic_version")).all()
    )
    assert [tuple(row) for row in version] == [("0003",)]


async def test_upgrade_head_matches_the_models(database_url: str) -> None:
    await _upgrade(database_url)
    await _assert_head_matches_models(database_url)


async def test_upgrade_head_twice_is_a_no_op(database_url: str) -> None:
    await _upgrade(database_url)
    await _upgrade(database_url)
    await _assert_head_matches_models(database_url)


async def test_downgrade_to_base_then_upgrade_again(database_url: str) -> None:
    await _upgrade(database_url)
    await _downgrade_to_base(database_url)
    tables = await _with_connection(database_url, lambda conn: inspect(conn).get_table_names())
    assert tables == ["alembic_version"]
    # The comparison sees a missing schema, so an empty diff above means something.
    missing = await _with_connection(database_url, _differences)
    assert sorted((diff[0], diff[1].name) for diff in missing) == [
        ("add_index", "ix_change_tags_change_id"),
        ("add_index", "ix_post_changes_unpublished"),
        ("add_index", "ix_posts_author_id_id"),
        ("add_table", "change_horizons"),
        ("add_table", "change_tags"),
        ("add_table", "post_changes"),
        ("add_table", "posts"),
        ("add_table", "users"),
    ]
    await _upgrade(database_url)
    await _assert_head_matches_models(database_url)


async def test_sqlite_posts_never_reuse_a_pk(tmp_path: Path) -> None:
    """AUTOINCREMENT on SQLite, so a deleted post's pk is never handed out again."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'autoincrement.db'}"
    await _upgrade(url)
    sql = await _with_connection(
        url,
        lambda conn: conn.execute(
            text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'posts'")
        ).scalar_one(),
    )
    assert "AUTOINCREMENT" in sql.upper()


async def test_user_flags_fill_existing_users(database_url: str) -> None:
    """0003 on a database that already has users and posts: every user stays active and
    none becomes an admin; no post is lost (a table copy on SQLite would cascade-delete)."""
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), "0002")
    engine = create_async_engine(database_url)
    try:
        async with asyncio.timeout(TIMEOUT), engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO users (id, username, password_hash, created_at) "
                    "VALUES (1, 'old', 'x', CURRENT_TIMESTAMP)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO posts (author_id, body, created_at, updated_at, version) "
                    "VALUES (1, 'kept', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1)"
                )
            )
    finally:
        await engine.dispose()
    await _upgrade(database_url)
    users = await _with_connection(
        database_url,
        lambda conn: conn.execute(text("SELECT username, is_admin, is_active FROM users")).all(),
    )
    assert [tuple(row) for row in users] == [("old", False, True)]
    # Down to 0002 drops the columns again, without a table copy: the post is still there.
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0002")
    bodies = await _with_connection(
        database_url, lambda conn: conn.execute(text("SELECT body FROM posts")).scalars().all()
    )
    assert bodies == ["kept"]
    await _upgrade(database_url)
    await _assert_head_matches_models(database_url)
