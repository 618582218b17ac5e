"""Multi-process deployments for tests: real uvicorn workers, nginx, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.cli.cluster import Cluster, free_port
from app.config import Settings
from tests.support import CLUSTER_SECRET, unique

PG_URL = os.environ.get("LIVEPOST_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("LIVEPOST_TEST_REDIS_URL")
REQUIRE = os.environ.get("LIVEPOST_REQUIRE_SERVICES") == "1"


def require_services() -> tuple[str, str]:
    """PostgreSQL and Redis URLs, or skip (fail under LIVEPOST_REQUIRE_SERVICES=1)."""
    if PG_URL and REDIS_URL:
        return PG_URL, REDIS_URL
    message = "needs LIVEPOST_TEST_DATABASE_URL and LIVEPOST_TEST_REDIS_URL"
    if REQUIRE:
        pytest.fail(message)
    pytest.skip(message)


async def admin_sql(url: str, statement: str) -> None:
    """Run statement (CREATE/DROP DATABASE) on the `postgres` database of url's server, outside
    a transaction. url may name any driver: Settings picks the async one."""
    admin = make_url(Settings(database_url=url).database_url).set(database="postgres")
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on url's server, dropped afterwards."""
    name = unique("lp_")
    asyncio.run(admin_sql(url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin_sql(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def running_cluster(
    workers: int,
    redis_url: str | None = None,
    *,
    nginx: bool,
    prefix: str | None = None,
    settings: dict[str, str] | None = None,
    worker_env: dict[int, dict[str, str]] | None = None,
) -> Iterator[Cluster]:
    """A started Cluster of `workers` processes on a fresh database, stopped afterwards.

    redis_url defaults to the shared test Redis; prefix, when given, is its CHANNEL_PREFIX;
    settings are more environment variables for the workers, worker_env for single ones.
    Skips (or fails under LIVEPOST_REQUIRE_SERVICES=1) without PostgreSQL and Redis."""
    pg_url, shared_redis_url = require_services()
    with fresh_database(pg_url) as database_url:
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url or shared_redis_url,
            "JWT_SECRET": CLUSTER_SECRET,
        }
        if prefix is not None:
            env["CHANNEL_PREFIX"] = prefix
        env |= settings or {}
        deployment = Cluster(workers, env, nginx=nginx, worker_env=worker_env)
        try:
            deployment.start()
            yield deployment
        finally:
            deployment.stop()


class RedisServer:
    """A private redis-server on a free loopback port, which a test may stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
