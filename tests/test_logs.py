"""Structured logs: the formats, request and connection ids, and no secret in any line.

The end-to-end test runs uvicorn as its operators do (a process, uvicorn's access log on)
and reads what it writes."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from uvicorn.logging import AccessFormatter

from app.cli.cluster import free_port
from app.config import Settings
from app.logs import (
    HANDLER_NAME,
    JsonFormatter,
    SecretFilter,
    TextFormatter,
    bind_log_fields,
    formatter_for,
    redact,
    setup_logging,
)
from app.migrations import upgrade_to_head
from tests.support import PASSWORD, TIMEOUT, Endpoint, Server, User, sqlite_server

ROOT = Path(__file__).resolve().parent.parent
SECRET = "logs-test-secret-" + "s" * 32
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"
HEX_ID = 32


# --- redaction and formats -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '127.0.0.1:5000 - "GET /ws?token=abc.def&x=1 HTTP/1.1" 101',
            '127.0.0.1:5000 - "GET /ws?token=[redacted]&x=1 HTTP/1.1" 101',
        ),
        ("/cb?access_token=abc&id_token=def", "/cb?access_token=[redacted]&id_token=[redacted]"),
        ("Authorization: Bearer abc.def", "Authorization: [redacted]"),
        (
            "{'authorization': 'Bearer abc', 'host': 'x'}",
            "{'authorization': [redacted], 'host': 'x'}",
        ),
        (
            "[(b'authorization', b'Bearer abc'), (b'host', b'x')]",
            "[(b'authorization', [redacted]), (b'host', b'x')]",
        ),
        ('{"password": "correct horse battery"}', '{"password": [redacted]}'),
        ("username=bob&password=hunter22", "username=bob&password=[redacted]"),
        ("Settings(jwt_secret='s3cr3t', port=1)", "Settings(jwt_secret=[redacted], port=1)"),
        (f"got {JWT} here", "got [redacted] here"),
        ("token=[redacted]", "token=[redacted]"),  # idempotent
        (
            "invalid token, closing; token_lifetime_minutes=60",
            "invalid token, closing; token_lifetime_minutes=60",
        ),
    ],
    ids=lambda value: value[:24],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def record(
    message: str, *args: Any, context: dict[str, Any] | None = None, **extra: Any
) -> logging.LogRecord:
    """A record as the app makes them: its request or connection fields, then `extra=`."""
    made = logging.LogRecord("app.test", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra, log_context=context or {})
    return made


def test_json_lines_carry_time_level_logger_message_and_fields() -> None:
    try:
        raise ValueError("boom with token=abc")
    except ValueError:
        exc_info = sys.exc_info()
    line_record = record("hello %s", "world", context={"request_id": "r1"}, user_id=7)
    line_record.exc_info = exc_info
    line = JsonFormatter().format(line_record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry.pop("time").endswith("+00:00")
    exception = entry.pop("exception")
    assert "ValueError: boom with token=[redacted]" in exception
    assert entry == {
        "level": "WARNING",
        "logger": "app.test",
        "message": "hello world",
        "request_id": "r1",
        "user_id": 7,
    }


def test_text_lines_are_plain() -> None:
    assert isinstance(formatter_for("text"), TextFormatter)
    assert isinstance(formatter_for("json"), JsonFormatter)
    line = TextFormatter().format(record("GET /x %d", 200, context={"request_id": "r1"}))
    assert line.endswith(" WARNING app.test: GET /x 200 request_id=r1"), line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_the_filter_keeps_uvicorn_access_arguments_usable() -> None:
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/ws?token={JWT}", "1.1", 101),
        None,
    )
    assert SecretFilter().filter(access)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(access)
    assert line == '127.0.0.1:5000 - "GET /ws?token=[redacted] HTTP/1.1" 101 Switching Protocols'


@pytest.mark.usefixtures("restore_root_logging")
def test_connection_fields_reach_every_record_and_never_clash_with_extra(
    caplog: pytest.LogCaptureFixture,
) -> None:
    setup_logging(Settings())
    caplog.set_level(logging.INFO, logger="app.test")

    def in_a_connection() -> None:
        bind_log_fields(connection_id="c1")
        bind_log_fields(user_id=7)
        logging.getLogger("app.test").info("hello", extra={"user_id": 8})

    contextvars.copy_context().run(in_a_connection)
    logging.getLogger("app.test").info("outside")
    inside, outside = caplog.records
    line = json.loads(JsonFormatter().format(inside))
    assert (line["connection_id"], line["user_id"]) == ("c1", 8)  # extra= wins
    assert "connection_id" not in json.loads(JsonFormatter().format(outside))


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logging")
def test_setup_installs_one_handler_in_the_configured_format() -> None:
    def ours() -> list[logging.Handler]:
        return [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME]

    setup_logging(Settings(log_format="text", log_level="warning"))
    setup_logging(Settings(log_format="text", log_level="warning"))
    (handler,) = ours()
    assert isinstance(handler.formatter, TextFormatter)
    assert logging.getLogger().level == logging.WARNING
    setup_logging(Settings())
    (handler,) = ours()
    assert isinstance(handler.formatter, JsonFormatter)
    assert any(isinstance(f, SecretFilter) for f in logging.getLogger("uvicorn.access").filters)


# --- request ids, in process ---------------------------------------------------------------


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with sqlite_server(tmp_path_factory.mktemp("logs"), jwt_secret=SECRET) as running:
        yield running


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with Endpoint(f"http://127.0.0.1:{server.port}").http() as client:
        yield client


def request_id(made: logging.LogRecord) -> str:
    return str(made.log_context["request_id"])


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.access"]


async def test_a_request_id_is_kept_or_made_and_logged(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    kept = await http.get("/healthz?token=abc", headers={"X-Request-ID": "edge-42.a_b"})
    made = await http.get("/healthz")
    unsafe = await http.get("/healthz", headers={"X-Request-ID": "has space " + "x" * 10})
    too_long = await http.get("/healthz", headers={"X-Request-ID": "x" * 65})
    assert kept.headers["x-request-id"] == "edge-42.a_b"
    ids = [r.headers["x-request-id"] for r in (made, unsafe, too_long)]
    assert all(len(i) == HEX_ID and int(i, 16) >= 0 for i in ids) and len(set(ids)) == 3
    logged = [
        {"request_id": request_id(r)}
        | {key: getattr(r, key) for key in ("method", "path", "status", "client")}
        for r in access_records(caplog)
    ]
    assert logged == [
        {
            "request_id": rid,
            "method": "GET",
            "path": "/healthz",
            "status": 200,
            "client": "127.0.0.1",
        }
        for rid in ["edge-42.a_b", *ids]
    ]
    assert all(isinstance(r.duration_ms, float) for r in access_records(caplog))


async def test_error_answers_carry_the_request_id_and_their_status(
    server: Server,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(_username: str, _password: str) -> str | None:
        raise RuntimeError("the database fell over")

    monkeypatch.setattr(server.runtime.accounts, "sign_in", broken)
    caplog.set_level(logging.INFO, logger="app.access")
    response = await http.post(
        "/auth/token",
        data={"username": "x", "password": PASSWORD},
        headers={"X-Request-ID": "failing-1"},
    )
    assert (response.status_code, response.json()) == (500, {"detail": "Internal server error."})
    assert response.headers["x-request-id"] == "failing-1"
    errors = [r for r in caplog.records if r.name == "app.main"]
    assert [(r.getMessage(), request_id(r)) for r in errors] == [("unhandled error", "failing-1")]
    (access,) = access_records(caplog)
    assert (request_id(access), access.status) == ("failing-1", 500)


# --- end to end: a uvicorn process and its output ------------------------------------------


def uvicorn_env(database_url: str, log_format: str) -> dict[str, str]:
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in {"REDIS_URL", "LOG_LEVEL", "LOG_FORMAT", "DATABASE_URL"}
    }
    return inherited | {
        "DATABASE_URL": database_url,
        "JWT_SECRET": SECRET,
        "LOG_FORMAT": log_format,
        "PYTHONUNBUFFERED": "1",
    }


async def wait_until(check: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    """Poll another process's state (there is no event to await), within TIMEOUT."""
    async with asyncio.timeout(TIMEOUT * 2):
        while not check():
            assert process.poll() is None, "uvicorn exited"
            await asyncio.sleep(0.05)


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def start_uvicorn(port: int, env: dict[str, str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    """uvicorn as operators run it, its access log on (the default)."""
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return subprocess.Popen(
            [*command, "--port", str(port), "--log-level", "info"],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )


async def serve_and_log(tmp_path: Path, log_format: str) -> tuple[User, str, str]:
    """Run uvicorn (its access log on) through sign-ups, sign-ins, a failed sign-in, REST with
    a bearer token, a token in a query string and a WebSocket opened with ?token=; return the
    user and uvicorn's stdout and stderr."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'livepost.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    process = start_uvicorn(port, uvicorn_env(url, log_format), out, err)
    try:
        await wait_until(lambda: healthy(base_url), process)
        endpoint = Endpoint(base_url)
        user = await endpoint.user()  # registers and signs in with PASSWORD
        async with endpoint.http() as http:
            failed = await http.post(
                "/auth/token", data={"username": user.username, "password": PASSWORD + "!"}
            )
            assert failed.status_code == 401
            mine = await http.get("/posts", headers=user.headers | {"X-Request-ID": "req-1"})
            assert mine.status_code == 200
            await http.get(f"/healthz?token={user.token}")
        client = await endpoint.connect(user)  # /ws?token=<jwt>
        await client.close()
        await wait_until(lambda: "websocket closed" in err.read_text(), process)
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.to_thread(process.wait, TIMEOUT)
    return user, out.read_text(), err.read_text()


def assert_no_secrets(user: User, output: str) -> None:
    for secret in (PASSWORD, user.token, SECRET):
        assert secret not in output
    assert "token=[redacted]" in output  # uvicorn's request lines were there, redacted


async def test_text_logs_have_no_secrets(tmp_path: Path) -> None:
    user, out, err = await serve_and_log(tmp_path, "text")
    assert_no_secrets(user, out + err)
    (closed,) = [line for line in err.splitlines() if "websocket closed" in line]
    assert " INFO app.access: websocket closed (1000) connection_id=" in closed
    assert f" user_id={user.id} " in closed and " close_code=1000 closed_by=client " in closed


async def test_logs_are_json_lines_without_secrets(tmp_path: Path) -> None:
    user, out, err = await serve_and_log(tmp_path, "json")
    assert_no_secrets(user, out + err)

    # uvicorn prints two lines before the app starts and configures logging; then JSON only.
    lines = err.splitlines()
    first_json = next(index for index, line in enumerate(lines) if line.startswith("{"))
    assert [line.split(" ")[0] for line in lines[:first_json]] == ["INFO:"] * 2, lines
    entries = json_lines("\n".join(lines[first_json:])) + json_lines(out)
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry

    ours = [e for e in entries if e["logger"] == "app.access"]
    requests = [e for e in ours if "request_id" in e]
    assert [(e["method"], e["path"], e["status"]) for e in requests] == [
        ("GET", "/healthz", 200),  # the readiness polls
    ] * (len(requests) - 5) + [
        ("POST", "/auth/register", 201),
        ("POST", "/auth/token", 200),
        ("POST", "/auth/token", 401),
        ("GET", "/posts", 200),
        ("GET", "/healthz", 200),
    ]
    assert requests[-2]["request_id"] == "req-1"
    for entry in requests:
        assert set(entry) == {
            "time",
            "level",
            "logger",
            "message",
            "request_id",
            "method",
            "path",
            "status",
            "duration_ms",
            "client",
        }, entry
    connection = [e for e in ours if "connection_id" in e]
    assert [e["message"] for e in connection] == ["websocket connected", "websocket closed (1000)"]
    assert {e["connection_id"] for e in connection} != {None}
    assert len({e["connection_id"] for e in connection}) == 1
    assert connection[-1] | {"time": "", "duration_ms": 0, "connection_id": ""} == {
        "time": "",
        "level": "INFO",
        "logger": "app.access",
        "message": "websocket closed (1000)",
        "connection_id": "",
        "user_id": user.id,
        "path": "/ws",
        "client": "127.0.0.1",
        "close_code": 1000,
        "closed_by": "client",
        "duration_ms": 0,
    }
    # uvicorn's own lines made while serving carry the ids too.
    uvicorn_access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert uvicorn_access and all("request_id" in e for e in uvicorn_access)
