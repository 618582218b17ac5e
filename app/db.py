"""Database engines: asyncpg on PostgreSQL, aiosqlite on SQLite, each tuned for its engine."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.config import Settings

SQLITE_BEGIN = "sqlite_begin"
APPLICATION_NAME = "livepost"
PING_AFTER_IDLE = 1.0  # seconds


def make_engine(settings: Settings) -> AsyncEngine:
    """Build the engine for settings.database_url."""
    if settings.is_sqlite:
        engine = create_async_engine(settings.database_url, connect_args={"timeout": 30})
        _tune_sqlite(engine)
        return engine
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_timeout,
        # Fail fast while PostgreSQL is unreachable or frozen instead of hanging requests.
        connect_args={
            "timeout": settings.db_timeout,
            "command_timeout": settings.db_timeout,
            # So operators can tell livepost's sessions apart in pg_stat_activity.
            "server_settings": {"application_name": APPLICATION_NAME},
        },
    )
    _ping_when_idle(engine)
    return engine


def is_unavailable(error: BaseException) -> bool:
    """True when error means the database cannot be reached (answer 503), not a bug (500)."""
    if isinstance(error, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, SQLAlchemyTimeoutError):  # the pool had no connection to give
        return True
    name = type(error).__module__
    return name.startswith("asyncpg") and "Connection" in type(error).__name__


def _ping_when_idle(engine: AsyncEngine) -> None:
    """A connection that died while the server was away is replaced, not handed out.

    SQLAlchemy's pool_pre_ping would ask on every checkout: a round trip, and about a fifth
    of the worker's CPU for a `create`. A connection back in use within PING_AFTER_IDLE
    seconds has just worked; only one idle for longer is asked. (A connection that fails in
    use is a disconnect, and SQLAlchemy then renews the whole pool.)"""

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and hands out another (a new one if need be).
            raise DisconnectionError(f"stale pooled connection: {error!r}") from error


def _tune_sqlite(engine: AsyncEngine) -> None:
    """WAL, foreign keys and explicit BEGIN so a write transaction can take the lock up front."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own implicit BEGIN would defer the write lock; we emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # SQLite's lower() folds ASCII only; body_contains must be case-insensitive for all text.
        dbapi_connection.create_function("lp_lower", 1, _lower, deterministic=True)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


async def begin_write(connection: AsyncConnection) -> AsyncConnection:
    """Mark a connection for a read-then-write transaction.

    On SQLite that is BEGIN IMMEDIATE: a deferred transaction that reads the old row and then
    writes would fail with SQLITE_BUSY when another writer got in between.
    """
    return await connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
