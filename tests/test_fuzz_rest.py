"""REST fuzzing from the OpenAPI schema (schemathesis): no route answers 5xx, whatever it gets.

The schema is the live server's own `/openapi.json`, on every stack. Each hypothesis example
sends one schemathesis case to every operation: valid data (positive mode) or data that breaks
the schema (negative mode: wrong types, missing fields, bad path and query parameters), with
the bearer token of a registered user (sometimes without it), and for the pk routes sometimes
aimed at a post of that user, so updates and deletes get past the 404. Afterwards no database
connection is left checked out and (PostgreSQL) no session is left idle in a transaction.

LIVEPOST_FUZZ_REST_EXAMPLES (default 30) is the number of cases per operation and stack; the
long run:

    LIVEPOST_FUZZ_REST_EXAMPLES=1000 \\
    LIVEPOST_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/livepost_test \\
    LIVEPOST_TEST_REDIS_URL=redis://127.0.0.1:6379/0 \\
    .venv/bin/pytest tests/test_fuzz_rest.py -s -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import TIMEOUT, Stack, User

EXAMPLES = int(os.environ.get("LIVEPOST_FUZZ_REST_EXAMPLES", "30"))


@dataclass
class Operation:
    label: str
    strategies: list[Any]  # positive, and negative when the operation takes any input
    streams: bool  # answers Server-Sent Events: read for a moment only


@dataclass
class RestArena:
    stack: Stack
    user: User
    operations: list[Operation]
    own_pk: int
    sent: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)


def _operations(schema: Any) -> list[Operation]:
    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        takes_input = bool(list(operation.iter_parameters())) or (
            "requestBody" in operation.definition.raw
        )
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else [])
        responses = operation.definition.raw.get("responses", {})
        streams = any(
            "text/event-stream" in (response.get("content") or {})
            for response in responses.values()
        )
        strategies = [operation.as_strategy(generation_mode=mode) for mode in modes]
        operations.append(Operation(operation.label, strategies, streams))
    return operations


async def _new_post(stack: Stack, user: User) -> int:
    async with stack.http() as http:
        response = await http.post(
            "/posts", json={"body": "rest fuzz target"}, headers=user.headers
        )
        assert response.status_code == 201, response.text
        return int(response.json()["pk"])


@pytest.fixture(scope="module")
async def rest(stack: Stack) -> AsyncIterator[RestArena]:
    user = await stack.user()
    async with stack.http() as http:
        response = await http.get("/openapi.json")
        assert response.status_code == 200, response.text
        document = response.json()
    schema = schemathesis.openapi.from_dict(document)
    operations = _operations(schema)
    assert {"POST /posts", "GET /posts", "DELETE /posts/{pk}"} <= {op.label for op in operations}
    yield RestArena(stack, user, operations, await _new_post(stack, user))


def _call(case: Any, base_url: str, headers: dict[str, str], timeout: float) -> Any:
    return case.call(base_url=base_url, headers=headers, timeout=timeout)


@pytest.mark.timeout(max(600, EXAMPLES * 10))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)
@given(data=st.data())
async def test_no_route_answers_a_server_error(rest: RestArena, data: st.DataObject) -> None:
    for operation in rest.operations:
        # An event stream is read until the timeout: only now and then, and briefly.
        if operation.streams and data.draw(st.integers(0, 4), label="stream now") > 0:
            continue
        case = data.draw(st.one_of(operation.strategies), label=operation.label)
        if "pk" in (case.path_parameters or {}) and data.draw(st.booleans(), label="own pk"):
            case.path_parameters["pk"] = rest.own_pk
        authenticated = data.draw(st.integers(0, 4), label="authenticated") > 0
        headers = rest.user.headers if authenticated else {}
        timeout = 0.5 if operation.streams else TIMEOUT
        response = await asyncio.to_thread(_call, case, rest.stack.base_url, headers, timeout)
        rest.sent[operation.label] = rest.sent.get(operation.label, 0) + 1
        rest.statuses[response.status_code] = rest.statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (
            f"{operation.label} answered {response.status_code}: {response.text[:500]}\n"
            f"reproduce: {case.as_curl_command(headers=headers, base_url=rest.stack.base_url)}"
        )
        if operation.label == "DELETE /posts/{pk}" and response.status_code == 204:
            if case.path_parameters["pk"] == rest.own_pk:
                rest.own_pk = await _new_post(rest.stack, rest.user)


async def _idle_in_transaction(database_url: str) -> list[Any]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT pid, state, left(query, 200) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND state LIKE 'idle in transaction%'"
                )
            )
            return list(rows.all())
    finally:
        await engine.dispose()


async def test_after_the_rest_fuzz_everything_still_works(rest: RestArena) -> None:
    async with rest.stack.http() as http:
        created = await http.post("/posts", json={"body": "after"}, headers=rest.user.headers)
        assert created.status_code == 201, created.text
        pk = created.json()["pk"]
        patched = await http.patch(
            f"/posts/{pk}", json={"body": "after, patched"}, headers=rest.user.headers
        )
        assert patched.status_code == 200 and patched.json()["version"] == 2, patched.text
        deleted = await http.delete(f"/posts/{pk}", headers=rest.user.headers)
        assert deleted.status_code == 204, deleted.text
        assert (await http.get("/readyz")).status_code == 200
    engine = rest.stack.server.runtime.engine
    for _ in range(200):  # the last response may be sent a moment before its connection returns
        if not engine.pool.checkedout():
            break
        await asyncio.sleep(0.05)
    assert engine.pool.checkedout() == 0, engine.pool.status()
    if rest.stack.name.startswith("postgres"):
        assert await _idle_in_transaction(rest.stack.settings.database_url) == []
    print(
        f"\n[rest fuzz {rest.stack.name}] {sum(rest.sent.values())} requests over "
        f"{len(rest.operations)} operations {dict(sorted(rest.sent.items()))}; "
        f"statuses {dict(sorted(rest.statuses.items()))}"
    )


# Requests schemathesis rarely or never generates; each must be answered below 500 too.
NASTY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "list-nul": ("GET", "/posts", {"params": {"body_contains": "\x00"}}),
    "list-inner-nul": ("GET", "/posts", {"params": {"body_contains": "a\x00b"}}),
    "list-surrogate": ("GET", "/posts?body_contains=%ED%A0%80", {}),
    "list-not-utf8": ("GET", "/posts?body_contains=%FF%FE", {}),
    "list-huge-limit": ("GET", "/posts", {"params": {"limit": str(2**200)}}),
    "list-before-2**63": ("GET", "/posts", {"params": {"before": str(2**63)}}),
    "list-before-5000-digits": ("GET", "/posts", {"params": {"before": "9" * 5000}}),
    "get-2**63": ("GET", f"/posts/{2**63}", {}),
    "get-5000-digits": ("GET", f"/posts/{'9' * 5000}", {}),
    "get-nul": ("GET", "/posts/%00", {}),
    "create-nul": ("POST", "/posts", {"json": {"body": "\x00"}}),
    "create-surrogate": ("POST", "/posts", {"content": b'{"body": "\\ud800"}'}),
    "create-not-utf8": ("POST", "/posts", {"content": b'{"body": "\xff\xfe"}'}),
    "create-deep": ("POST", "/posts", {"content": b"[" * 5000 + b"]" * 5000}),
    "create-5000-digits": ("POST", "/posts", {"content": b'{"body": ' + b"9" * 5000 + b"}"}),
    "create-nan": ("POST", "/posts", {"content": b'{"body": NaN}'}),
    "put-infinity": ("PUT", "/posts/1", {"content": b'{"body": Infinity}'}),
    "patch-null": ("PATCH", "/posts/1", {"json": {"body": None}}),
    "register-nul": ("POST", "/auth/register", {"json": {"username": "\x00", "password": "x" * 8}}),
    "register-surrogate": (
        "POST",
        "/auth/register",
        {"content": b'{"username": "\\ud800", "password": "12345678"}'},
    ),
    "token-nul": ("POST", "/auth/token", {"data": {"username": "\x00", "password": "\x00"}}),
    "token-not-utf8": ("POST", "/auth/token", {"content": b"username=%ED%A0%80&password=%FF"}),
}


@pytest.mark.parametrize("name", NASTY)
async def test_nasty_requests_get_no_server_error(rest: RestArena, name: str) -> None:
    method, url, options = NASTY[name]
    headers = dict(rest.user.headers)
    if "content" in options:
        headers["Content-Type"] = (
            "application/x-www-form-urlencoded" if url == "/auth/token" else "application/json"
        )
    async with rest.stack.http() as http:
        response = await http.request(method, url, headers=headers, **options)
    assert response.status_code < 500, response.text
