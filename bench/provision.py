"""Setting up what a deployment needs: virtualenvs for the baselines, PostgreSQL roles and
databases. Each step checks first, so a second run reuses what the first one built."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the JSON lines and the tables."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def ensure_venv(path: Path, requirements: Path) -> Path:
    """A virtualenv at path with the pinned requirements file installed (from PyPI); reused
    while the file is unchanged. Returns its python."""
    python = path / "bin" / "python"
    marker = path / ".bench-requirements"
    wanted = requirements.read_text()
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    log(f"creating {path} with {requirements.name}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-r", str(requirements)],
        check=True,
    )  # fmt: skip
    marker.write_text(wanted)
    return python


def installed_versions(python: Path, names: list[str]) -> dict[str, str]:
    """Package versions in another virtualenv, to record what a baseline ran on."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    result = subprocess.run(
        [str(python), "-c", code, *names], check=True, capture_output=True, text=True
    )
    versions: dict[str, str] = json.loads(result.stdout)
    return versions


def plain_dsn(url: str, database: str | None = None) -> str:
    """url as a libpq DSN asyncpg accepts (no +driver), optionally naming another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _admin(url: str, statements: list[tuple[str, str]]) -> None:
    """For each (check query, statement): run statement when the check finds no row."""
    connection = await asyncpg.connect(plain_dsn(url, "postgres"), timeout=10)
    try:
        for check, statement in statements:
            if await connection.fetchval(check) is None:
                await connection.execute(statement)
    finally:
        await connection.close()


def ensure_database(url: str, owner: str | None = None) -> None:
    """Create the database url names (on url's server) if it does not exist."""
    name = make_url(url).database
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"refusing an unusual database name in {url!r}")
    suffix = f" OWNER {owner}" if owner else ""
    check = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
    asyncio.run(_admin(url, [(check, f'CREATE DATABASE "{name}"{suffix}')]))


def ensure_role(url: str, role: str, password: str) -> None:
    """A superuser login role (what the DCRF baseline's README creates)."""
    check = f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'"
    statement = f"CREATE ROLE {role} LOGIN PASSWORD '{password}' SUPERUSER"
    asyncio.run(_admin(url, [(check, statement)]))


def run_sql(url: str, statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(plain_dsn(url), timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())
