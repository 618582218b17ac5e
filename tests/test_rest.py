"""The REST mirrors over a real server: auth, posts, probes and the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from tests.support import PASSWORD, Stack, User, assert_post_is, post_json, unique

NOT_FOUND = {"detail": "Not found"}
NOT_AUTHENTICATED = {"detail": "Not authenticated"}
INVALID_TOKEN = {"detail": "Invalid token."}
BAD_CREDENTIALS = {"detail": "Incorrect username or password."}
BODY_MISSING = {"type": "missing", "loc": ["body", "body"], "msg": "Field required", "input": {}}


def not_a_string(value: object) -> dict[str, Any]:
    return {
        "type": "string_type",
        "loc": ["body", "body"],
        "msg": "Input should be a valid string",
        "input": value,
    }


def body_length_error(response: httpx.Response) -> None:
    """422 with one error on the body field (empty, blank or too long after stripping).

    The message differs by layer (pydantic's length check or the service's DRF texts), so
    only the shape is pinned here; the whole error is FastAPI's {"loc", "msg", "type", ...}.
    """
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "body"], error
    assert isinstance(error["msg"], str) and isinstance(error["type"], str), error


def assert_post(post: dict[str, Any], *, author: int, body: str, version: int) -> None:
    """The whole post: exactly its five keys, with created_at an aware ISO 8601 time."""
    post_json(post)
    assert isinstance(post["pk"], int) and post["pk"] >= 1
    assert isinstance(post["created_at"], str)
    assert datetime.fromisoformat(post["created_at"]).tzinfo is not None, post
    assert_post_is(post, author=author, body=body, version=version)


def error_locs(response: httpx.Response) -> list[list[str | int]]:
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["detail"]]


async def create(client: httpx.AsyncClient, user: User, body: str) -> dict[str, Any]:
    response = await client.post("/posts", json={"body": body}, headers=user.headers)
    assert response.status_code == 201, response.text
    post: dict[str, Any] = response.json()
    assert_post(post, author=user.id, body=body.strip(), version=1)
    return post


async def missing_pk(client: httpx.AsyncClient, user: User) -> int:
    """A pk that existed and is gone: certainly not found."""
    post = await create(client, user, unique("gone"))
    assert (await client.delete(f"/posts/{post['pk']}", headers=user.headers)).status_code == 204
    return int(post["pk"])


# --- registration and tokens -------------------------------------------------------------


async def test_register_returns_id_and_username(live: Stack) -> None:
    username = unique("reg")
    async with live.http() as client:
        response = await client.post(
            "/auth/register", json={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert isinstance(body["id"], int)
        assert body == {"id": body["id"], "username": username}
        token = await client.post("/auth/token", data={"username": username, "password": PASSWORD})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        created = await client.post("/posts", json={"body": "mine"}, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["author"] == body["id"]


async def test_register_taken_username_is_409(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        response = await client.post(
            "/auth/register", json={"username": user.username, "password": "another password"}
        )
        assert response.status_code == 409, response.text
        assert response.json() == {"detail": "Username already taken."}
        # The original password still works: nothing was overwritten.
        token = await client.post(
            "/auth/token", data={"username": user.username, "password": PASSWORD}
        )
    assert token.status_code == 200, token.text


async def test_register_short_password_is_422(live: Stack) -> None:
    username = unique("short")
    async with live.http() as client:
        response = await client.post(
            "/auth/register", json={"username": username, "password": "7chars!"}
        )
        assert response.status_code == 422, response.text
        assert response.json() == {
            "detail": [
                {
                    "type": "string_too_short",
                    "loc": ["body", "password"],
                    "msg": "String should have at least 8 characters",
                    "input": "7chars!",
                    "ctx": {"min_length": 8},
                }
            ]
        }
        token = await client.post("/auth/token", data={"username": username, "password": "7chars!"})
    assert token.status_code == 401


async def test_register_missing_fields_is_422(live: Stack) -> None:
    async with live.http() as client:
        empty = await client.post("/auth/register", json={})
        no_password = await client.post("/auth/register", json={"username": unique("np")})
        not_json = await client.post("/auth/register", content=b"not json")
    assert empty.status_code == 422
    assert empty.json() == {
        "detail": [
            {"type": "missing", "loc": ["body", "username"], "msg": "Field required", "input": {}},
            {"type": "missing", "loc": ["body", "password"], "msg": "Field required", "input": {}},
        ]
    }
    assert error_locs(no_password) == [["body", "password"]]
    assert not_json.status_code == 422


async def test_register_rejects_bad_username_characters(live: Stack) -> None:
    marker = unique("bad")
    async with live.http() as client:
        for username in (f"{marker} space", f"{marker}!", f"{marker}/slash", ""):
            response = await client.post(
                "/auth/register", json={"username": username, "password": PASSWORD}
            )
            assert error_locs(response) == [["body", "username"]], username
        too_long = await client.post(
            "/auth/register", json={"username": "u" * 151, "password": PASSWORD}
        )
        assert error_locs(too_long) == [["body", "username"]]
        # None of them became an account.
        token = await client.post(
            "/auth/token", data={"username": f"{marker} space", "password": PASSWORD}
        )
    assert token.status_code == 401


async def test_register_accepts_django_username_characters(live: Stack) -> None:
    username = unique("ok") + "_.@+-"
    async with live.http() as client:
        response = await client.post(
            "/auth/register", json={"username": username, "password": PASSWORD}
        )
    assert response.status_code == 201, response.text
    assert response.json() == {"id": response.json()["id"], "username": username}


async def test_token_issued_for_form_credentials(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        response = await client.post(
            "/auth/token", data={"username": user.username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body == {"access_token": body["access_token"], "token_type": "bearer"}
        assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2
        created = await client.post(
            "/posts",
            json={"body": "with a fresh token"},
            headers={"Authorization": f"Bearer {body['access_token']}"},
        )
    assert created.status_code == 201, created.text
    assert created.json()["author"] == user.id


async def test_token_wrong_password_and_unknown_user_look_the_same(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        wrong = await client.post(
            "/auth/token", data={"username": user.username, "password": "wrong password"}
        )
        unknown = await client.post(
            "/auth/token", data={"username": unique("nobody"), "password": PASSWORD}
        )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == BAD_CREDENTIALS
    assert wrong.content == unknown.content
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"


async def test_token_requires_form_fields(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        as_json = await client.post(
            "/auth/token", json={"username": user.username, "password": PASSWORD}
        )
        no_password = await client.post("/auth/token", data={"username": user.username})
    assert as_json.status_code == 422, as_json.text
    assert error_locs(no_password) == [["body", "password"]]


# --- reading posts -----------------------------------------------------------------------


async def test_list_newest_first_with_filters(live: Stack) -> None:
    user = await live.user()
    marker = unique("list")
    async with live.http() as client:
        first = await create(client, user, f"first {marker}")
        second = await create(client, user, f"second {marker.upper()}")
        third = await create(client, user, f"third {marker}")
        await create(client, user, "unrelated body")

        everything = await client.get("/posts", params={"body_contains": marker})
        upper = await client.get("/posts", params={"body_contains": marker.upper()})
        limited = await client.get("/posts", params={"body_contains": marker, "limit": 2})
        older = await client.get("/posts", params={"body_contains": marker, "before": third["pk"]})
        oldest = await client.get("/posts", params={"body_contains": marker, "before": first["pk"]})
        unfiltered = await client.get("/posts", params={"limit": 500})
    assert everything.status_code == 200, everything.text
    assert everything.json() == [third, second, first]
    assert upper.json() == [third, second, first]
    assert limited.json() == [third, second]
    assert older.json() == [second, first]
    assert oldest.json() == []
    posts = unfiltered.json()
    assert unfiltered.status_code == 200 and 4 <= len(posts) <= 500
    assert [post["pk"] for post in posts] == sorted((post["pk"] for post in posts), reverse=True)
    for post in posts:
        post_json(post)


async def test_list_rejects_bad_parameters(live: Stack) -> None:
    async with live.http() as client:
        zero = await client.get("/posts", params={"limit": 0})
        too_many = await client.get("/posts", params={"limit": 501})
        word = await client.get("/posts", params={"limit": "x"})
        before_zero = await client.get("/posts", params={"before": 0})
        before_word = await client.get("/posts", params={"before": "x"})
    assert zero.status_code == 422
    assert zero.json() == {
        "detail": [
            {
                "type": "greater_than_equal",
                "loc": ["query", "limit"],
                "msg": "Input should be greater than or equal to 1",
                "input": "0",
                "ctx": {"ge": 1},
            }
        ]
    }
    assert too_many.status_code == 422
    assert too_many.json() == {
        "detail": [
            {
                "type": "less_than_equal",
                "loc": ["query", "limit"],
                "msg": "Input should be less than or equal to 500",
                "input": "501",
                "ctx": {"le": 500},
            }
        ]
    }
    assert word.status_code == 422
    assert word.json() == {
        "detail": [
            {
                "type": "int_parsing",
                "loc": ["query", "limit"],
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "input": "x",
            }
        ]
    }
    assert before_zero.status_code == 422
    assert before_zero.json() == {
        "detail": [
            {
                "type": "greater_than_equal",
                "loc": ["query", "before"],
                "msg": "Input should be greater than or equal to 1",
                "input": "0",
                "ctx": {"ge": 1},
            }
        ]
    }
    assert error_locs(before_word) == [["query", "before"]]


async def test_retrieve_post_and_missing_post(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        post = await create(client, user, unique("retrieve"))
        found = await client.get(f"/posts/{post['pk']}")
        gone = await missing_pk(client, user)
        missing = await client.get(f"/posts/{gone}")
        huge = await client.get(f"/posts/{2**62}")
    assert found.status_code == 200, found.text
    assert found.json() == post
    assert missing.status_code == 404
    assert missing.json() == NOT_FOUND
    assert huge.status_code == 404
    assert huge.json() == NOT_FOUND


# --- creating posts ----------------------------------------------------------------------


async def test_create_strips_whitespace_and_starts_at_version_1(live: Stack) -> None:
    user = await live.user()
    text = unique("created") + " #Python"
    async with live.http() as client:
        response = await client.post(
            "/posts", json={"body": f"  \n\t{text} \n"}, headers=user.headers
        )
        assert response.status_code == 201, response.text
        post = response.json()
        assert_post(post, author=user.id, body=text, version=1)
        fetched = await client.get(f"/posts/{post['pk']}")
    assert fetched.json() == post


async def test_create_accepts_256_characters_after_stripping(live: Stack) -> None:
    """PROTOCOL: surrounding white space is stripped *before* validation (trim_whitespace)."""
    user = await live.user()
    text = "a" * 256
    async with live.http() as client:
        exact = await client.post("/posts", json={"body": text}, headers=user.headers)
        padded = await client.post("/posts", json={"body": f"  {text}  "}, headers=user.headers)
    assert exact.status_code == 201, exact.text
    assert_post(exact.json(), author=user.id, body=text, version=1)
    assert padded.status_code == 201, padded.text[:200]
    assert_post(padded.json(), author=user.id, body=text, version=1)


async def test_create_requires_authentication(live: Stack) -> None:
    marker = unique("anon")
    async with live.http() as client:
        anonymous = await client.post("/posts", json={"body": marker})
        bad_token = await client.post(
            "/posts", json={"body": marker}, headers={"Authorization": "Bearer not-a-token"}
        )
        listed = await client.get("/posts", params={"body_contains": marker})
    assert anonymous.status_code == 401
    assert anonymous.json() == NOT_AUTHENTICATED
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert bad_token.status_code == 401
    assert bad_token.json() == INVALID_TOKEN
    assert bad_token.headers["www-authenticate"] == "Bearer"
    assert listed.json() == []


async def test_create_rejects_invalid_bodies(live: Stack) -> None:
    user = await live.user()
    too_long = "b" * 257
    async with live.http() as client:

        async def post(payload: object) -> httpx.Response:
            return await client.post("/posts", json=payload, headers=user.headers)

        empty = await post({"body": ""})
        blank = await post({"body": " \n\t "})
        long = await post({"body": too_long})
        missing = await post({})
        number = await post({"body": 5})
        null = await post({"body": None})
        listed = await client.get("/posts", params={"body_contains": too_long})
    for response in (empty, blank, long):
        body_length_error(response)
    assert (missing.status_code, missing.json()) == (422, {"detail": [BODY_MISSING]})
    assert (number.status_code, number.json()) == (422, {"detail": [not_a_string(5)]})
    assert (null.status_code, null.json()) == (422, {"detail": [not_a_string(None)]})
    assert listed.json() == []


# --- updating posts ----------------------------------------------------------------------


async def test_put_and_patch_bump_the_version(live: Stack) -> None:
    user = await live.user()
    marker = unique("edit")
    async with live.http() as client:
        post = await create(client, user, f"{marker} v1")
        put = await client.put(
            f"/posts/{post['pk']}", json={"body": f"  {marker} v2  "}, headers=user.headers
        )
        assert put.status_code == 200, put.text
        assert put.json() == {**post, "body": f"{marker} v2", "version": 2}
        patch = await client.patch(
            f"/posts/{post['pk']}", json={"body": f"{marker} v3"}, headers=user.headers
        )
        assert patch.status_code == 200, patch.text
        assert patch.json() == {**post, "body": f"{marker} v3", "version": 3}
        fetched = await client.get(f"/posts/{post['pk']}")
    assert fetched.json() == patch.json()


async def test_identical_body_is_no_change(live: Stack) -> None:
    user = await live.user()
    marker = unique("same")
    async with live.http() as client:
        post = await create(client, user, marker)
        url = f"/posts/{post['pk']}"
        same_put = await client.put(url, json={"body": marker}, headers=user.headers)
        padded_put = await client.put(url, json={"body": f" {marker}\n"}, headers=user.headers)
        same_patch = await client.patch(url, json={"body": marker}, headers=user.headers)
        empty_patch = await client.patch(url, json={}, headers=user.headers)
        fetched = await client.get(url)
    for response in (same_put, padded_put, same_patch, empty_patch):
        assert response.status_code == 200, response.text
        assert response.json() == post
    assert fetched.json() == post


async def test_update_requires_authentication(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        post = await create(client, user, unique("locked"))
        url = f"/posts/{post['pk']}"
        bad = {"Authorization": "Bearer not-a-token"}
        responses = [
            await client.put(url, json={"body": "changed"}),
            await client.patch(url, json={"body": "changed"}),
            await client.put(url, json={"body": "changed"}, headers=bad),
            await client.patch(url, json={"body": "changed"}, headers=bad),
        ]
        fetched = await client.get(url)
    assert [(r.status_code, r.json()) for r in responses] == [
        (401, NOT_AUTHENTICATED),
        (401, NOT_AUTHENTICATED),
        (401, INVALID_TOKEN),
        (401, INVALID_TOKEN),
    ]
    assert fetched.json() == post


async def test_update_missing_post_is_404(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        gone = await missing_pk(client, user)
        put = await client.put(f"/posts/{gone}", json={"body": "x"}, headers=user.headers)
        patch = await client.patch(f"/posts/{gone}", json={"body": "x"}, headers=user.headers)
        huge = await client.put(f"/posts/{2**62}", json={"body": "x"}, headers=user.headers)
    assert [(r.status_code, r.json()) for r in (put, patch, huge)] == [(404, NOT_FOUND)] * 3


async def test_update_another_users_post_is_404_and_changes_nothing(live: Stack) -> None:
    alice, mallory = await live.user(), await live.user()
    async with live.http() as client:
        post = await create(client, alice, unique("alice"))
        url = f"/posts/{post['pk']}"
        put = await client.put(url, json={"body": "pwned"}, headers=mallory.headers)
        patch = await client.patch(url, json={"body": "pwned"}, headers=mallory.headers)
        fetched = await client.get(url)
    assert [(r.status_code, r.json()) for r in (put, patch)] == [(404, NOT_FOUND)] * 2
    assert fetched.json() == post


async def test_update_rejects_invalid_bodies(live: Stack) -> None:
    user = await live.user()
    too_long = "c" * 257
    async with live.http() as client:
        post = await create(client, user, unique("valid"))
        url = f"/posts/{post['pk']}"
        put_empty = await client.put(url, json={"body": ""}, headers=user.headers)
        put_blank = await client.put(url, json={"body": "   "}, headers=user.headers)
        put_long = await client.put(url, json={"body": too_long}, headers=user.headers)
        put_missing = await client.put(url, json={}, headers=user.headers)
        put_number = await client.put(url, json={"body": 7}, headers=user.headers)
        patch_blank = await client.patch(url, json={"body": "   "}, headers=user.headers)
        patch_long = await client.patch(url, json={"body": too_long}, headers=user.headers)
        patch_number = await client.patch(url, json={"body": 7}, headers=user.headers)
        fetched = await client.get(url)
    for response in (put_empty, put_blank, put_long, patch_blank, patch_long):
        body_length_error(response)
    assert (put_missing.status_code, put_missing.json()) == (422, {"detail": [BODY_MISSING]})
    assert (put_number.status_code, put_number.json()) == (422, {"detail": [not_a_string(7)]})
    assert error_locs(patch_number) == [["body", "body"]]
    assert fetched.json() == post


# --- deleting posts ----------------------------------------------------------------------


async def test_delete_post(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        post = await create(client, user, unique("delete"))
        url = f"/posts/{post['pk']}"
        deleted = await client.delete(url, headers=user.headers)
        fetched = await client.get(url)
        again = await client.delete(url, headers=user.headers)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert (fetched.status_code, fetched.json()) == (404, NOT_FOUND)
    assert (again.status_code, again.json()) == (404, NOT_FOUND)


async def test_delete_requires_authentication(live: Stack) -> None:
    user = await live.user()
    async with live.http() as client:
        post = await create(client, user, unique("keep"))
        url = f"/posts/{post['pk']}"
        anonymous = await client.delete(url)
        bad = await client.delete(url, headers={"Authorization": "Bearer not-a-token"})
        fetched = await client.get(url)
    assert (anonymous.status_code, anonymous.json()) == (401, NOT_AUTHENTICATED)
    assert (bad.status_code, bad.json()) == (401, INVALID_TOKEN)
    assert fetched.json() == post


async def test_delete_missing_or_another_users_post_is_404(live: Stack) -> None:
    alice, mallory = await live.user(), await live.user()
    async with live.http() as client:
        post = await create(client, alice, unique("alice"))
        gone = await missing_pk(client, alice)
        missing = await client.delete(f"/posts/{gone}", headers=alice.headers)
        foreign = await client.delete(f"/posts/{post['pk']}", headers=mallory.headers)
        fetched = await client.get(f"/posts/{post['pk']}")
    assert (missing.status_code, missing.json()) == (404, NOT_FOUND)
    assert (foreign.status_code, foreign.json()) == (404, NOT_FOUND)
    assert fetched.json() == post


# --- probes and schema -------------------------------------------------------------------


async def test_health_probes(live: Stack) -> None:
    async with live.http() as client:
        healthz = await client.get("/healthz")
        readyz = await client.get("/readyz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
    ready = readyz.json()
    # broker_stats: operators' counters, empty for the in-process broker.
    assert (readyz.status_code, ready) == (
        200,
        {"database": "ok", "broker": "ok", "broker_stats": ready["broker_stats"]},
    )
    assert isinstance(ready["broker_stats"], dict)
    if live.settings.redis_url is None:
        assert ready["broker_stats"] == {}
    else:
        assert ready["broker_stats"]["connected"] is True


async def test_openapi_documents_every_route(live: Stack) -> None:
    async with live.http() as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    documented = {
        path: {method: sorted(operation["responses"]) for method, operation in ops.items()}
        for path, ops in schema["paths"].items()
    }
    assert documented == {
        "/auth/register": {"post": ["201", "409", "422", "429"]},
        "/auth/token": {"post": ["200", "401", "422", "429"]},
        "/posts": {"get": ["200", "422"], "post": ["201", "401", "422"]},
        "/posts/{pk}": {
            "get": ["200", "404", "422"],
            "put": ["200", "401", "404", "422"],
            "patch": ["200", "401", "404", "422"],
            "delete": ["204", "401", "404", "422"],
        },
        "/hashtags/{tag}/events": {"get": ["200", "400", "401", "422", "429", "503"]},
        "/healthz": {"get": ["200"]},
        "/readyz": {"get": ["200", "503"]},
    }
    components = schema["components"]
    assert components["schemas"]["PostPublic"]["examples"] == [
        {
            "pk": 23,
            "author": 4,
            "body": "Check out this new framework... #Django #Python",
            "created_at": "2020-05-31T00:46:33+00:00",
            "version": 1,
        }
    ]
    assert set(components["schemas"]["PostPublic"]["required"]) == {
        "pk",
        "author",
        "body",
        "created_at",
        "version",
    }
    assert "OAuth2PasswordBearer" in components["securitySchemes"]
