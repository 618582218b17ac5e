"""The `livepost` console script, run as a real subprocess against the running stack."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from app.changelog.watermark import read_watermark
from app.cli.cluster import free_port
from app.config import Settings
from tests.admin_support import sign_in
from tests.conftest import SECRET
from tests.support import (
    CLI_TIMEOUT,
    PASSWORD,
    CliResult,
    Endpoint,
    Server,
    Stack,
    assert_post_is,
    barrier,
    event,
    query,
    resume,
    run_cli,
    subscribe,
    unique,
)
from tests.test_migrations import EXPECTED_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
# Nothing listens there: a CLI told this finds no server at its SERVER_URL.
CLOSED_SERVER = "http://127.0.0.1:9"
# Settings the CLI reads from the environment; each test states the ones it means.
SETTINGS_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET",
    "JWT_SECRET_FILE",
    "SERVER_URL",
    "CHANNEL_PREFIX",
    "HOST",
    "PORT",
    "LIVEPOST_PASSWORD",
)


def cli_env(**variables: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update({key: value for key, value in variables.items() if value is not None})
    return env


def stack_env(live: Stack) -> dict[str, str]:
    """The environment of a CLI that works on the stack's database (and broker)."""
    settings = live.settings
    assert settings.jwt_secret is not None
    return cli_env(
        DATABASE_URL=settings.database_url,
        JWT_SECRET=settings.jwt_secret,
        REDIS_URL=settings.redis_url,
        CHANNEL_PREFIX=settings.channel_prefix,
    )


async def cli(
    live: Stack,
    tmp_path: Path,
    *args: str,
    stdin: str | None = None,
    **variables: str,
) -> CliResult:
    env = stack_env(live) | variables
    return await run_cli(*args, env=env, cwd=tmp_path, stdin=stdin)


async def cli_user(live: Stack, tmp_path: Path) -> dict[str, Any]:
    username = unique("cli")
    created = (await cli(live, tmp_path, "user", "create", username, "--password", PASSWORD)).json()
    assert isinstance(created["id"], int)
    assert created == {"id": created["id"], "username": username, "is_admin": False}
    return dict(created)


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def others_post_is_not_theirs(live: Stack, tmp_path: Path, *, marker: str) -> None:
    """Mallory's CLI edit and delete of Alice's post both say Not found; the post stays."""
    alice, mallory = await live.user(), await live.user()
    async with live.http() as client:
        response = await client.post(
            "/posts", json={"body": unique(marker)}, headers=headers(alice.token)
        )
        assert response.status_code == 201
        post = response.json()
        pk = str(post["pk"])
        edit = await cli(
            live,
            tmp_path,
            "post",
            "edit",
            "--user",
            mallory.username,
            "--pk",
            pk,
            "--body",
            "x",
        )
        delete = await cli(
            live,
            tmp_path,
            "post",
            "delete",
            "--user",
            mallory.username,
            "--pk",
            pk,
        )
        fetched = await client.get(f"/posts/{pk}")
    assert edit == CliResult(1, "", "livepost: Not found\n")
    assert delete == CliResult(1, "", "livepost: Not found\n")
    assert fetched.json() == post


# --- users -------------------------------------------------------------------------------


async def test_user_create_then_log_in_over_rest(live: Stack, tmp_path: Path) -> None:
    user = await cli_user(live, tmp_path)
    async with live.http() as client:
        token = await client.post(
            "/auth/token", data={"username": user["username"], "password": PASSWORD}
        )
        assert token.status_code == 200, token.text
        created = await client.post(
            "/posts", json={"body": "hello"}, headers=headers(token.json()["access_token"])
        )
    assert created.status_code == 201, created.text
    assert created.json()["author"] == user["id"]


async def test_user_create_duplicate_fails(live: Stack, tmp_path: Path) -> None:
    user = await live.user()
    result = await cli(live, tmp_path, "user", "create", user.username, "--password", "other pw 1")
    assert result == CliResult(1, "", f"livepost: username {user.username!r} is taken\n")
    async with live.http() as client:
        token = await client.post(
            "/auth/token", data={"username": user.username, "password": PASSWORD}
        )
    assert token.status_code == 200


async def test_user_create_rejects_invalid_input_in_words(live: Stack, tmp_path: Path) -> None:
    short = await cli(live, tmp_path, "user", "create", unique("short"), "--password", "short")
    assert short == CliResult(1, "", "livepost: password: must be at least 8 characters long\n")
    bad_name = await cli(
        live, tmp_path, "user", "create", unique("bad") + " !", "--password", PASSWORD
    )
    assert bad_name == CliResult(
        1, "", "livepost: username: may contain only letters, digits and . @ + - _\n"
    )
    long_name = await cli(live, tmp_path, "user", "create", "x" * 151, "--password", PASSWORD)
    too_long = "livepost: username: must be at most 150 characters long\n"
    assert long_name == CliResult(1, "", too_long)


async def test_user_create_without_a_password_says_how_to_give_one(
    live: Stack, tmp_path: Path
) -> None:
    """No --password, no LIVEPOST_PASSWORD, no terminal and nothing on standard input."""
    result = await cli(live, tmp_path, "user", "create", unique("nopw"))
    assert result == CliResult(
        1,
        "",
        "livepost: no password: pass --password, set LIVEPOST_PASSWORD, or give it on standard "
        "input (there is no terminal to ask in)\n",
    )


@pytest.mark.parametrize("given", ["environment", "stdin"])
async def test_user_create_takes_the_password_from_the_environment_or_stdin(
    live: Stack, tmp_path: Path, given: str
) -> None:
    username = unique("pw")
    if given == "environment":
        result = await cli(live, tmp_path, "user", "create", username, LIVEPOST_PASSWORD=PASSWORD)
    else:
        result = await cli(live, tmp_path, "user", "create", username, stdin=PASSWORD + "\n")
    assert result.json()["username"] == username
    async with live.http() as client:
        token = await client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert token.status_code == 200, token.text


async def test_user_create_admin_may_sign_in_at_admin(live: Stack, tmp_path: Path) -> None:
    username = unique("boss")
    created = await cli(
        live, tmp_path, "user", "create", username, "--password", PASSWORD, "--admin"
    )
    assert created.json() == {"id": created.json()["id"], "username": username, "is_admin": True}
    async with live.http() as client:
        response = await sign_in(client, username)
    assert response.status_code == 302, response.text


async def test_user_admin_grants_the_flag(live: Stack, tmp_path: Path) -> None:
    user = await live.user()
    async with live.http() as client:
        assert (await sign_in(client, user.username)).status_code == 400
        granted = await cli(live, tmp_path, "user", "admin", user.username)
        assert granted.json() == {"id": user.id, "username": user.username, "is_admin": True}
        assert (await sign_in(client, user.username)).status_code == 302
    missing = unique("nobody")
    result = await cli(live, tmp_path, "user", "admin", missing)
    assert result == CliResult(1, "", f"livepost: no user {missing!r}\n")


async def test_user_token_works_over_rest(live: Stack, tmp_path: Path) -> None:
    user = await live.user()
    result = await cli(live, tmp_path, "user", "token", user.username)
    assert result.returncode == 0, result
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    async with live.http() as client:
        created = await client.post(
            "/posts", json={"body": "via cli token"}, headers=headers(token)
        )
    assert created.status_code == 201, created.text
    assert created.json()["author"] == user.id


async def test_user_token_for_unknown_user_fails(live: Stack, tmp_path: Path) -> None:
    name = unique("nobody")
    result = await cli(live, tmp_path, "user", "token", name)
    assert result == CliResult(1, "", f"livepost: no user {name!r}\n")


# --- posts -------------------------------------------------------------------------------


async def test_post_create_is_retrievable_over_rest(live: Stack, tmp_path: Path) -> None:
    user = await live.user()
    text = unique("clipost") + " #cli"
    post = (
        await cli(live, tmp_path, "post", "create", "--user", user.username, "--body", f"  {text} ")
    ).json()
    assert_post_is(post, author=user.id, body=text, version=1)
    async with live.http() as client:
        fetched = await client.get(f"/posts/{post['pk']}")
    assert (fetched.status_code, fetched.json()) == (200, post)


async def test_post_create_reaches_subscribers(live: Stack, tmp_path: Path) -> None:
    user = await live.user()
    tag = unique("clitag")
    watcher = await live.connect(await live.user())
    await subscribe(watcher, tag, "cli-watch")
    post = (
        await cli(live, tmp_path, "post", "create", "--user", user.username, "--body", f"#{tag}")
    ).json()
    assert_post_is(post, author=user.id, body=f"#{tag}", version=1)
    assert await watcher.recv() == event("create", post["pk"], post, "cli-watch")


async def test_post_edit_and_delete(live: Stack, tmp_path: Path) -> None:
    user = await live.user()
    marker = unique("cliedit")
    created = (
        await cli(live, tmp_path, "post", "create", "--user", user.username, "--body", marker)
    ).json()
    pk = str(created["pk"])
    edited = (
        await cli(
            live, tmp_path, "post", "edit", "--user", user.username, "--pk", pk, "--body", "edited"
        )
    ).json()
    assert edited == {**created, "body": "edited", "version": 2}
    async with live.http() as client:
        assert (await client.get(f"/posts/{pk}")).json() == edited
        deleted = await cli(live, tmp_path, "post", "delete", "--user", user.username, "--pk", pk)
        assert deleted == CliResult(0, "", "")
        gone = await client.get(f"/posts/{pk}")
    assert (gone.status_code, gone.json()) == (404, {"detail": "Not found"})
    again = await cli(live, tmp_path, "post", "delete", "--user", user.username, "--pk", pk)
    assert again == CliResult(1, "", "livepost: Not found\n")


async def test_post_edit_invalid_body_fails(live: Stack, tmp_path: Path) -> None:
    user = await live.user()
    created = (
        await cli(live, tmp_path, "post", "create", "--user", user.username, "--body", unique("v"))
    ).json()
    pk = str(created["pk"])
    blank = await cli(
        live, tmp_path, *("post", "edit", "--user", user.username, "--pk", pk, "--body", "   ")
    )
    assert blank == CliResult(1, "", "livepost: body: This field may not be blank.\n")
    async with live.http() as client:
        assert (await client.get(f"/posts/{pk}")).json() == created


async def test_editing_someone_elses_post_fails(live: Stack, tmp_path: Path) -> None:
    await others_post_is_not_theirs(live, tmp_path, marker="alice")


async def test_post_as_unknown_user_fails(live: Stack, tmp_path: Path) -> None:
    name = unique("ghost")
    result = await cli(live, tmp_path, "post", "create", "--user", name, "--body", "boo")
    assert result == CliResult(1, "", f"livepost: no user {name!r}\n")


async def test_post_list(live: Stack, tmp_path: Path) -> None:
    user = await live.user()
    marker = unique("clilist")
    posts = [
        (
            await cli(
                live, tmp_path, "post", "create", "--user", user.username, "--body", f"{n} {marker}"
            )
        ).json()
        for n in range(3)
    ]
    listed = (await cli(live, tmp_path, "post", "list", "--contains", marker.upper())).json_lines()
    limited = (
        await cli(live, tmp_path, "post", "list", "--contains", marker, "--limit", "2")
    ).json_lines()
    assert listed == posts[::-1]
    assert limited == posts[:0:-1]
    async with live.http() as client:
        over_rest = await client.get("/posts", params={"body_contains": marker})
    assert over_rest.json() == listed


# --- writes reach subscribers through the change log ---------------------------------------


async def log_rows(database_url: str, pk: int) -> list[Any]:
    """The post's change records, oldest first."""
    return await query(
        database_url,
        "SELECT id, published, external FROM post_changes WHERE post_id = :pk ORDER BY id",
        pk=pk,
    )


async def until_published(database_url: str, pk: int, timeout: float) -> None:  # noqa: ASYNC109
    """Wait (polling the log) until every change of the post is marked published."""
    async with asyncio.timeout(timeout):
        while True:
            # The relay is in another process (or the server's task): only the log tells.
            if all(row.published for row in await log_rows(database_url, pk)):
                return
            await asyncio.sleep(0.05)


async def test_writes_reach_a_server_the_cli_does_not_address(live: Stack, tmp_path: Path) -> None:
    """SERVER_URL and PORT name no server; the server on the CLI's database still sends each
    write's event within its relay's interval plus its grace. With the in-process broker the
    CLI leaves the change in the log for that relay (nobody hears its own broker); with Redis
    it publishes like any worker. Either way, the watermark passes a change only after its
    event went out."""
    user = await live.user()
    tag = unique("elsewhere")
    watcher = await live.connect(await live.user())
    await subscribe(watcher, tag, "w")
    within = live.settings.relay_interval_seconds + live.settings.relay_grace_seconds
    elsewhere = {"SERVER_URL": CLOSED_SERVER, "PORT": str(free_port())}

    async def write(*args: str) -> CliResult:
        return await cli(live, tmp_path, "post", *args, "--user", user.username, **elsewhere)

    post = (await write("create", "--body", f"#{tag}")).json()
    pk = post["pk"]
    created = await watcher.recv(timeout=within)
    edited = (await write("edit", "--pk", str(pk), "--body", f"#{tag} again")).json()
    updated = await watcher.recv(timeout=within)
    assert await write("delete", "--pk", str(pk)) == CliResult(0, "", "")
    deleted = await watcher.recv(timeout=within)

    assert_post_is(edited, author=user.id, body=f"#{tag} again", version=2)
    assert created == event("create", pk, post, "w")
    assert updated == event("update", pk, edited, "w")
    assert deleted == event("delete", pk, {"pk": pk}, "w")
    rows = await log_rows(live.settings.database_url, pk)
    assert [row.id for row in rows] == [frame["offset"] for frame in (created, updated, deleted)]
    for frame in (created, updated, deleted):
        # The watermark had not passed the change when its event was sent: a client resuming
        # from any `safe` it held before would have got the change again.
        assert frame["safe"] < frame["offset"], frame
    # Flagged for the relays (published at their next round, not after the grace), unless
    # the CLI could publish itself.
    assert [bool(row.external) for row in rows] == [live.settings.redis_url is None] * 3
    await until_published(live.settings.database_url, pk, within)


async def test_a_write_made_while_no_server_runs_goes_out_when_one_starts(
    tmp_path: Path,
) -> None:
    """With no server running the CLI's change stays unpublished, and the watermark below it,
    until a server's relay publishes it; a client resuming from before it gets it once."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'later.db'}"
    env = cli_env(DATABASE_URL=url, JWT_SECRET=SECRET)
    assert (await run_cli("migrate", env=env, cwd=tmp_path)).returncode == 0
    username, tag = unique("early"), unique("early")
    created = await run_cli(
        "user", "create", username, "--password", PASSWORD, env=env, cwd=tmp_path
    )
    assert created.returncode == 0, created
    written = await run_cli(
        "post", "create", "--user", username, "--body", f"#{tag}", env=env, cwd=tmp_path
    )
    post = written.json()
    [row] = await log_rows(url, post["pk"])
    assert (bool(row.published), bool(row.external)) == (False, True)
    engine = create_async_engine(url)
    try:
        assert await read_watermark(engine) == row.id - 1
    finally:
        await engine.dispose()

    settings = Settings(database_url=url, jwt_secret=SECRET)
    server = Server(settings)
    await server.start()
    endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
    try:
        await until_published(url, post["pk"], settings.relay_interval_seconds + 5)
        reader_user = await endpoint.user()
        reader = await endpoint.connect(reader_user)
        assert (await resume(reader, tag, row.id - 1, "r"))["recovered"] is True
        assert await reader.recv() == event("create", post["pk"], post, "r", offset=row.id)
        await barrier(endpoint, reader_user, reader)  # and only once
    finally:
        await endpoint.close_clients()
        await server.stop()


# --- serve and migrate -------------------------------------------------------------------


async def test_serve_with_workers_needs_redis(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}", JWT_SECRET="s" * 40)
    result = await run_cli("serve", "--workers", "2", "--port", str(port), env=env, cwd=tmp_path)
    assert result.returncode != 0, result
    assert result.stdout == ""
    assert "REDIS_URL" in result.stderr, result
    assert "Traceback" not in result.stderr, result
    # Refused before doing anything: no database file or secret, nothing listening.
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


async def test_serve_on_postgres_without_secret_refuses(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL="postgresql://livepost@127.0.0.1:9/livepost")
    result = await run_cli("serve", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert result.returncode != 0, result
    assert result.stdout == ""
    assert "JWT_SECRET" in result.stderr, result
    assert "Traceback" not in result.stderr, result
    assert await asyncio.to_thread(os.listdir, tmp_path) == []  # no secret file made up


async def test_migrate_creates_the_tables(tmp_path: Path) -> None:
    database = tmp_path / "fresh.db"
    env = cli_env(DATABASE_URL=f"sqlite:///{database}")
    result = await run_cli("migrate", env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, ""), result
    engine = create_async_engine(f"sqlite+aiosqlite:///{database}")
    try:
        async with asyncio.timeout(CLI_TIMEOUT), engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: sorted(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert tables == EXPECTED_SCHEMA["tables"]


@pytest.mark.parametrize("args", [(), ("user",), ("post",)])
async def test_no_command_prints_usage(args: tuple[str, ...], tmp_path: Path) -> None:
    result = await run_cli(*args, env=cli_env(), cwd=tmp_path)
    assert result.returncode != 0, result
    assert "usage: livepost" in result.stdout + result.stderr
