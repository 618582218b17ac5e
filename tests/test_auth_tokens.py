"""Passwords, access tokens and the signing secret: unit checks and the live server's refusals."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from jose import jwt

from app.config import ConfigError, Settings
from app.security import hash_password, issue_token, read_token, verify_password
from tests.support import PASSWORD, TIMEOUT, Stack, post_json

SECRET = "unit-test-secret-" + "k" * 32
OTHER_SECRET = "another-secret-" + "z" * 32


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def future() -> int:
    return int(time.time()) + 3600


def bad_tokens(secret: str, user_id: int) -> dict[str, str]:
    """Every kind of token the service must refuse, each otherwise aimed at `user_id`."""
    sub = str(user_id)
    good = issue_token(user_id, secret, 3600)
    header, _payload, signature = good.split(".")
    forged_payload = segment({"sub": str(user_id + 1), "iat": int(time.time()), "exp": future()})
    return {
        "alg-none": f"{segment({'alg': 'none', 'typ': 'JWT'})}."
        f"{segment({'sub': sub, 'exp': future()})}.",
        "alg-none-signed": f"{segment({'alg': 'none', 'typ': 'JWT'})}."
        f"{segment({'sub': sub, 'exp': future()})}.{signature}",
        "other-key": jwt.encode({"sub": sub, "exp": future()}, OTHER_SECRET, algorithm="HS256"),
        "hs512-right-key": jwt.encode({"sub": sub, "exp": future()}, secret, algorithm="HS512"),
        "tampered-payload": f"{header}.{forged_payload}.{signature}",
        "tampered-signature": f"{header}.{_payload}.{signature[::-1]}",
        "expired": jwt.encode(
            {"sub": sub, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
            secret,
            algorithm="HS256",
        ),
        "no-exp": jwt.encode({"sub": sub}, secret, algorithm="HS256"),
        "no-sub": jwt.encode({"exp": future()}, secret, algorithm="HS256"),
        "non-numeric-sub": jwt.encode({"sub": "alice", "exp": future()}, secret, algorithm="HS256"),
        "negative-sub": jwt.encode({"sub": "-1", "exp": future()}, secret, algorithm="HS256"),
        "integer-sub": jwt.encode({"sub": user_id, "exp": future()}, secret, algorithm="HS256"),
        "string-exp": jwt.encode({"sub": sub, "exp": "tomorrow"}, secret, algorithm="HS256"),
        "garbage": "garbage",
        "three-dots": "a.b.c",
        "dots-only": "..",
        "header-only": header,
        "too-long": good + "A" * 5000,
    }


# --- passwords ---------------------------------------------------------------------------


def test_password_hash_is_argon2id() -> None:
    hashed = hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$")
    assert PASSWORD not in hashed
    assert hash_password(PASSWORD) != hashed  # salted


def test_verify_password() -> None:
    hashed = hash_password(PASSWORD)
    assert verify_password(PASSWORD, hashed) is True
    assert verify_password(PASSWORD + "!", hashed) is False
    assert verify_password("", hashed) is False
    assert verify_password(PASSWORD, None) is False  # unknown user: still refused
    assert verify_password(PASSWORD, "not-a-hash") is False


# --- tokens ------------------------------------------------------------------------------


def test_token_roundtrip() -> None:
    before = time.time()
    token = issue_token(42, SECRET, 600)
    claims = read_token(token, SECRET)
    assert claims is not None
    assert claims.user_id == 42
    assert before + 600 - 1 <= claims.expires_at <= time.time() + 600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


@pytest.mark.parametrize("kind", sorted(bad_tokens(SECRET, 42)))
def test_bad_token_is_rejected(kind: str) -> None:
    assert read_token(bad_tokens(SECRET, 42)[kind], SECRET) is None


@pytest.mark.parametrize("token", ["", " ", "Bearer x", "\x00", "é.é.é"])
def test_garbage_token_is_rejected(token: str) -> None:
    assert read_token(token, SECRET) is None


def test_token_for_another_secret_is_rejected() -> None:
    assert read_token(issue_token(42, SECRET, 600), OTHER_SECRET) is None


# --- the live server ---------------------------------------------------------------------


async def refused_on_handshake(
    live: Stack, *, query: str = "", authorization: str | None = None
) -> int:
    """The status of a WebSocket handshake that must be refused (with this Authorization)."""
    headers = {"Authorization": authorization} if authorization is not None else None
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with asyncio.timeout(TIMEOUT):
            connection = await websockets.connect(live.ws_url + query, additional_headers=headers)
        await connection.close()
    return int(refused.value.response.status_code)


async def rest_create(client: httpx.AsyncClient, authorization: str, body: str) -> tuple[int, Any]:
    """A REST create sent with this Authorization header: the status and JSON it got."""
    response = await client.post(
        "/posts", json={"body": body}, headers={"Authorization": authorization}
    )
    return response.status_code, response.json()


async def test_bad_tokens_refused_over_websocket_and_rest(live: Stack) -> None:
    user = await live.user()
    tokens = bad_tokens(live.settings.secret, user.id)
    async with live.http() as client:
        for kind, token in tokens.items():
            status = await refused_on_handshake(live, query=f"?token={quote(token, safe='')}")
            assert status == 403, kind
            status = await refused_on_handshake(live, authorization=f"Bearer {token}")
            assert status == 403, kind
            response = await rest_create(client, f"Bearer {token}", kind)
            assert response == (401, {"detail": "Invalid token."}), kind
        # The good token still works on both.
        good = await client.post("/posts", json={"body": "fine"}, headers=user.headers)
    assert good.status_code == 201, good.text
    client_ws = await live.connect(user)
    reply = await client_ws.ask({"action": "create", "data": {"body": "fine"}, "request_id": 1})
    post = post_json(reply["data"])
    assert reply == {
        "errors": [],
        "data": {**post, "author": user.id, "body": "fine", "version": 1},
        "action": "create",
        "response_status": 201,
        "request_id": 1,
    }


async def test_malformed_authorization_header_refused(live: Stack) -> None:
    user = await live.user()
    for header in (f"Basic {user.token}", "Bearer", "Bearer   ", user.token):
        assert await refused_on_handshake(live, authorization=header) == 403, header
    async with live.http() as client:
        response = await rest_create(client, f"Basic {user.token}", "x")
    assert response == (401, {"detail": "Not authenticated"})


async def test_valid_token_for_missing_user_refused(live: Stack) -> None:
    secret = live.settings.secret
    ghosts = {
        "missing": issue_token(2**62, secret, 3600),
        "beyond-bigint": jwt.encode(
            {"sub": str(2**70), "exp": future()}, secret, algorithm="HS256"
        ),
        "zero": issue_token(0, secret, 3600),
    }
    async with live.http() as client:
        for kind, token in ghosts.items():
            status = await refused_on_handshake(live, query=f"?token={token}")
            assert status == 403, kind
            response = await rest_create(client, f"Bearer {token}", kind)
            assert response == (401, {"detail": "Invalid token."}), kind


async def test_authenticate_action_refuses_bad_tokens(live: Stack) -> None:
    user = await live.user()
    client = await live.connect()
    for kind, token in bad_tokens(live.settings.secret, user.id).items():
        reply = await client.ask({"action": "authenticate", "token": token, "request_id": kind})
        assert reply == {
            "errors": ["Invalid token."],
            "data": None,
            "action": "authenticate",
            "response_status": 401,
            "request_id": kind,
        }
    # Still anonymous: a write is forbidden.
    reply = await client.ask({"action": "create", "data": {"body": "x"}, "request_id": 2})
    assert reply == {
        "errors": ["You do not have permission to perform this action."],
        "data": None,
        "action": "create",
        "response_status": 403,
        "request_id": 2,
    }


# --- the signing secret ------------------------------------------------------------------


def test_embedded_secret_is_created_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    first = Settings(database_url=url, jwt_secret=None, jwt_secret_file=str(path))
    value = first.secret
    assert len(value) >= 32
    assert path.read_text() == value + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = Settings(database_url=url, jwt_secret=None, jwt_secret_file=str(path))
    assert second.secret == value
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_configured_secret_wins_and_writes_no_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    settings = Settings(
        database_url="sqlite+aiosqlite:///x.db", jwt_secret=SECRET, jwt_secret_file=str(path)
    )
    assert settings.secret == SECRET
    assert not path.exists()


def test_empty_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("")
    settings = Settings(
        database_url="sqlite+aiosqlite:///x.db", jwt_secret=None, jwt_secret_file=str(path)
    )
    with pytest.raises(ConfigError):
        settings.secret  # noqa: B018


def test_postgres_without_secret_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    path = tmp_path / "secret"
    settings = Settings(
        database_url="postgresql://user@db.example/livepost",
        jwt_secret=None,
        jwt_secret_file=str(path),
    )
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        settings.secret  # noqa: B018
    assert not path.exists()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("sqlite+aiosqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
    ],
)
def test_database_url_from_environment_gets_async_driver(
    given: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", given)
    assert Settings().database_url == expected
