"""One stack fixture over every backend: SQLite + in-process broker, PostgreSQL + in-process
broker, PostgreSQL + Redis.

PostgreSQL runs when LIVEPOST_TEST_DATABASE_URL is set, Redis when LIVEPOST_TEST_REDIS_URL is.
With LIVEPOST_REQUIRE_SERVICES=1 (set by .ci/run) a missing or unreachable service fails the
run instead of skipping its stack.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.cli.cluster import Cluster
from app.config import Settings
from app.migrations import upgrade_to_head
from tests.cluster_support import RedisServer, require_services
from tests.support import Endpoint, Server, Stack, unique

PG_URL = os.environ.get("LIVEPOST_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("LIVEPOST_TEST_REDIS_URL")
REQUIRE = os.environ.get("LIVEPOST_REQUIRE_SERVICES") == "1"
SECRET = "test-secret-" + "x" * 32

STACKS = ["sqlite+memory", "postgres+memory", "postgres+redis"]
GENEROUS_LIMITS: dict[str, Any] = {
    "ws_rate_per_second": 1_000_000.0,
    "ws_rate_burst": 1_000_000,
    "login_failures_per_username": 1_000_000,
    "login_failures_per_ip": 1_000_000,
    "registrations_per_ip": 1_000_000,
}


def pytest_configure(config: pytest.Config) -> None:
    if REQUIRE and not (PG_URL and REDIS_URL):
        raise pytest.UsageError(
            "LIVEPOST_REQUIRE_SERVICES=1 needs LIVEPOST_TEST_DATABASE_URL and "
            "LIVEPOST_TEST_REDIS_URL"
        )


# What `make test` runs without services, and how to run the rest (printed before and after
# the run: skips are otherwise silent, and most of the suite needs the services).
ENABLE = [
    "  LIVEPOST_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/livepost_test"
    "  (an empty database the suite may wipe)",
    "  LIVEPOST_TEST_REDIS_URL=redis://127.0.0.1:6379/0",
]
LOCAL_SERVICES = {"PostgreSQL": ("127.0.0.1", 5432), "Redis": ("127.0.0.1", 6379)}


def stacks_running() -> dict[str, bool]:
    """Each of STACKS, and whether this run has its services."""
    return {
        "sqlite+memory": True,
        "postgres+memory": bool(PG_URL),
        "postgres+redis": bool(PG_URL and REDIS_URL),
    }


def pytest_report_header(config: pytest.Config) -> list[str]:
    running = stacks_running()
    lines = [
        "livepost stacks: "
        + ", ".join(f"{name} {'on' if on else 'off'}" for name, on in running.items())
    ]
    if not all(running.values()):
        lines += ["the others, and the multi-process tests, run with (as .ci/run sets them):"]
        lines += ENABLE
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Skipped tests grouped by why, and how to run them."""
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if not reasons:
        return
    write = terminalreporter.write_line
    terminalreporter.section("livepost: what did not run")
    running = stacks_running()
    write("stacks run:     " + (", ".join(n for n, on in running.items() if on) or "none"))
    write("stacks skipped: " + (", ".join(n for n, on in running.items() if not on) or "none"))
    for reason, count in reasons.most_common():
        write(f"{count:6d} skipped: {reason}")
    if not (PG_URL and REDIS_URL):
        answering = [name for name, address in LOCAL_SERVICES.items() if _answers(address)]
        write("to run them, set (as .ci/run does):")
        for line in ENABLE:
            write(line)
        if answering:
            write(f"({' and '.join(answering)} answer here on the default ports.)")


def _answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.2):
            return True
    except OSError:
        return False


def redis_url_for(name: str) -> str | None:
    if not name.endswith("+redis"):
        return None
    if not REDIS_URL:
        if REQUIRE:
            pytest.fail("Redis is required but LIVEPOST_TEST_REDIS_URL is unset")
        pytest.skip("set LIVEPOST_TEST_REDIS_URL to run the Redis stack")
    return REDIS_URL


async def reset_postgres(url: str) -> None:
    """Empty the test database so the schema comes from the migrations alone."""
    engine = create_async_engine(Settings(database_url=url).database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


async def database_url_for(name: str, tmp: Path) -> str:
    if name.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp / 'livepost.db'}"
    if not PG_URL:
        if REQUIRE:
            pytest.fail("PostgreSQL is required but LIVEPOST_TEST_DATABASE_URL is unset")
        pytest.skip("set LIVEPOST_TEST_DATABASE_URL to run the PostgreSQL stack")
    try:
        await reset_postgres(PG_URL)
    except OSError as error:
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable: {error}")
    return PG_URL


@pytest.fixture(scope="session", params=STACKS)
async def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    name = request.param
    redis_url = redis_url_for(name)
    url = await database_url_for(name, tmp_path_factory.mktemp(name.replace("+", "-")))
    await asyncio.to_thread(upgrade_to_head, url)
    settings = Settings(
        database_url=url,
        redis_url=redis_url,
        jwt_secret=SECRET,
        channel_prefix=unique("lpt"),
        # A CLI write without Redis reaches subscribers through the relay's next round: a
        # short round keeps those tests from waiting out the default second each.
        relay_interval_seconds=0.2,
        # The protocol suites pipeline hundreds of requests from one address and user; the
        # limits themselves are tested on servers of their own.
        **GENEROUS_LIMITS,
    )
    server = Server(settings)
    await server.start()
    deployed = Stack(name, settings, server)
    try:
        yield deployed
    finally:
        await deployed.close_clients()
        await server.stop()


@pytest.fixture
async def live(stack: Stack) -> AsyncIterator[Stack]:
    """The stack, closing the WebSocket clients a test opened."""
    yield stack
    await stack.close_clients()


@pytest.fixture
async def workers(cluster: Cluster) -> AsyncIterator[list[Endpoint]]:
    """Clients for each worker of the module's `cluster` fixture, closing what a test opened.

    Every module that uses it defines its own module-scoped `cluster`."""
    endpoints = [Endpoint(url) for url in cluster.worker_urls]
    yield endpoints
    for endpoint in endpoints:
        await endpoint.close_clients()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the module, which its tests may stop and restart."""
    require_services()
    server = RedisServer()
    server.start()
    yield server
    server.stop()
