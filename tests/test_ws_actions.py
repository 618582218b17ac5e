"""The WebSocket action protocol (PROTOCOL.md, "WebSocket: GET /ws"), request by request.

Every test runs on each stack of the `live` fixture and asserts whole replies. The database is
shared by the tests of one stack, so each test finds its own posts through a fresh marker.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

import app.protocol.session as session_module
from app.security import issue_token
from tests.support import (
    Stack,
    User,
    WsClient,
    barrier,
    event,
    fail,
    ok,
    post_json,
    subscribe,
    unique,
    wrapped,
)

Post = dict[str, Any]

NOT_FOUND = ["Not found"]
DENIED = ["You do not have permission to perform this action."]
ABSENT_PK = 2**62  # a valid BIGINT no test stack ever reaches


# --- expected replies ---------------------------------------------------------------------


def required(field: str) -> list[Any]:
    return [{field: ["This field is required."]}]


# --- small steps ---------------------------------------------------------------------------


def a_post(post: Any) -> Post:
    """Check the server-chosen fields of a post (pk, created_at) and return it."""
    post_json(post)
    assert isinstance(post["pk"], int) and not isinstance(post["pk"], bool)
    assert datetime.fromisoformat(post["created_at"]).utcoffset() is not None
    return post


def new_post(served: Any, author: User, body: str) -> Post:
    """The post a create should return: pk and created_at are the server's to choose."""
    served = a_post(served)
    return {
        "pk": served["pk"],
        "author": author.id,
        "body": body.strip(),
        "created_at": served["created_at"],
        "version": 1,
    }


async def create(client: WsClient, author: User, body: str, request_id: Any = "c") -> Post:
    """Create a post and assert the whole 201 reply; the stored body is the stripped one."""
    reply = await client.ask({"action": "create", "data": {"body": body}, "request_id": request_id})
    post = new_post(reply["data"], author, body)
    assert reply == ok("create", post, request_id, 201)
    return post


async def retrieve(client: WsClient, pk: Any, request_id: Any = "r") -> Any:
    return await client.ask({"action": "retrieve", "pk": pk, "request_id": request_id})


async def listing(client: WsClient, request_id: Any = "l", **params: Any) -> Any:
    return await client.ask({"action": "list", "request_id": request_id, **params})


async def writer(live: Stack) -> tuple[User, WsClient]:
    """A registered user and a connection authenticated as that user."""
    user = await live.user()
    return user, await live.connect(user)


async def assert_open(client: WsClient) -> None:
    """The connection still answers a normal request (malformed input must not close it)."""
    marker = unique("open")
    assert await listing(client, "still-open", body_contains=marker) == ok("list", [], "still-open")


async def assert_refused(
    live: Stack, *, query: str = "", headers: dict[str, str] | None = None
) -> None:
    """The upgrade is refused with HTTP 403."""
    with pytest.raises(InvalidStatus) as refused:
        await live.connect(query=query, headers=headers)
    assert refused.value.response.status_code == 403


def expired_token(live: Stack, user: User) -> str:
    return issue_token(user.id, live.settings.secret, -10)


# --- list ----------------------------------------------------------------------------------


async def test_list_is_newest_first(live: Stack) -> None:
    alice, client = await writer(live)
    marker = unique("m")
    posts = [await create(client, alice, f"{marker} number {n}") for n in range(3)]
    assert await listing(client, 1, body_contains=marker) == ok("list", posts[::-1], 1)


@pytest.mark.parametrize(
    ("stored", "query"),
    [
        ("école {m}", "ÉCOLE {M}"),
        ("ÉCOLE {M}", "école {m}"),
        ("Привет {m}", "пРИВЕТ {M}"),
        ("Check out #Django {m}", "django {M}"),
    ],
    ids=["lower-stored", "upper-stored", "cyrillic", "ascii"],
)
async def test_list_body_contains_is_case_insensitive(live: Stack, stored: str, query: str) -> None:
    alice, client = await writer(live)
    marker = unique("m")
    fill = {"m": marker, "M": marker.upper()}
    post = await create(client, alice, stored.format(**fill))
    await create(client, alice, f"{marker} unrelated")
    reply = await listing(client, 2, body_contains=query.format(**fill))
    assert reply == ok("list", [post], 2)


@pytest.mark.parametrize("wildcard", ["%", "_"])
async def test_list_body_contains_is_a_plain_substring(live: Stack, wildcard: str) -> None:
    # LIKE wildcards in the filter are literal characters, not patterns.
    alice, client = await writer(live)
    marker = unique("m")
    literal = await create(client, alice, f"{marker} 10{wildcard}0")
    await create(client, alice, f"{marker} 1000")
    reply = await listing(client, 3, body_contains=f"{marker} 10{wildcard}")
    assert reply == ok("list", [literal], 3)


@pytest.mark.parametrize("where", ["top-level", "in-data"])
async def test_list_limit_and_before(live: Stack, where: str) -> None:
    # DCRF's clients send filters inside `data`; plain clients at the top level.
    alice, client = await writer(live)
    marker = unique("m")
    first, second, third, fourth = [await create(client, alice, f"{marker} {n}") for n in range(4)]

    async def ask(**params: Any) -> Any:
        if where == "in-data":
            return await client.ask({"action": "list", "data": params, "request_id": 9})
        return await listing(client, 9, **params)

    assert await ask(body_contains=marker, limit=2) == ok("list", [fourth, third], 9)
    assert await ask(body_contains=marker, before=third["pk"]) == ok("list", [second, first], 9)
    page = await ask(body_contains=marker, before=fourth["pk"], limit=2)
    assert page == ok("list", [third, second], 9)
    assert await ask(body_contains=marker, before=first["pk"]) == ok("list", [], 9)
    # Integral strings are integers, as for DRF's IntegerField.
    page = await ask(body_contains=marker, limit="1", before=str(fourth["pk"]))
    assert page == ok("list", [third], 9)


async def test_list_limit_defaults_to_500(live: Stack) -> None:
    _, client = await writer(live)
    marker = unique("m")
    # Pipelined: replies come back in request order, so no need to wait for each one.
    for n in range(501):
        await client.send({"action": "create", "data": {"body": f"{marker} {n}"}, "request_id": n})
    replies = [await client.recv() for _ in range(501)]
    assert [(r["request_id"], r["response_status"]) for r in replies] == [
        (n, 201) for n in range(501)
    ]
    newest_first = [reply["data"] for reply in reversed(replies)]
    assert await listing(client, "d", body_contains=marker) == ok("list", newest_first[:500], "d")
    full = await listing(client, "m", body_contains=marker, limit=500)
    assert full == ok("list", newest_first[:500], "m")


LIST_PARAM_ERRORS = [
    ({"limit": "x"}, {"limit": ["A valid integer is required."]}),
    ({"limit": 1.5}, {"limit": ["A valid integer is required."]}),
    ({"limit": True}, {"limit": ["A valid integer is required."]}),
    ({"limit": [1]}, {"limit": ["A valid integer is required."]}),
    ({"limit": 0}, {"limit": ["Ensure this value is greater than or equal to 1."]}),
    ({"limit": -5}, {"limit": ["Ensure this value is greater than or equal to 1."]}),
    ({"limit": 501}, {"limit": ["Ensure this value is less than or equal to 500."]}),
    ({"before": 0}, {"before": ["Ensure this value is greater than or equal to 1."]}),
    ({"before": "x"}, {"before": ["A valid integer is required."]}),
    (
        {"limit": 0, "before": "x"},
        {
            "limit": ["Ensure this value is greater than or equal to 1."],
            "before": ["A valid integer is required."],
        },
    ),
]


@pytest.mark.parametrize("where", ["top-level", "in-data"])
@pytest.mark.parametrize(
    ("params", "errors"), LIST_PARAM_ERRORS, ids=[json.dumps(p) for p, _ in LIST_PARAM_ERRORS]
)
async def test_list_bad_params(
    live: Stack, where: str, params: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    # Every bad parameter is reported at once, in one error object.
    client = await live.connect()
    request = {"action": "list", "request_id": 4}
    request |= {"data": params} if where == "in-data" else params
    assert await client.ask(request) == fail("list", 400, [errors], 4)
    await assert_open(client)


# --- retrieve ------------------------------------------------------------------------------


async def test_retrieve(live: Stack) -> None:
    alice, client = await writer(live)
    post = await create(client, alice, f"{unique('m')} hello")
    assert await retrieve(client, post["pk"], 1) == ok("retrieve", post, 1)
    # A digit string is a pk, as Django's lookup takes it.
    assert await retrieve(client, str(post["pk"]), 2) == ok("retrieve", post, 2)


NOT_A_PK = [ABSENT_PK, "abc", "", "1.5", "1e3", 1.5, None, True, False, [1], {"pk": 1}]
NOT_A_PK += [0, -1, 2**63, 2**80, "٣"]  # out of BIGINT range, non-ASCII digit


@pytest.mark.parametrize("pk", NOT_A_PK, ids=[json.dumps(pk) for pk in NOT_A_PK])
async def test_retrieve_not_found(live: Stack, pk: Any) -> None:
    # Any pk that names no post, malformed ones included, is 404 like Django's lookup.
    client = await live.connect()
    assert await retrieve(client, pk, 5) == fail("retrieve", 404, NOT_FOUND, 5)
    await assert_open(client)


@pytest.mark.parametrize("action", ["retrieve", "update", "patch", "delete"])
async def test_missing_pk(live: Stack, action: str) -> None:
    _, client = await writer(live)
    request = {"action": action, "data": {"body": "x"}, "request_id": 6}
    assert await client.ask(request) == fail(action, 400, required("pk"), 6)
    await assert_open(client)


# --- create --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    ["plain", "  \n\t padded \r\n ", "é" * 256, " " + "x" * 256 + "\n"],
    ids=["plain", "whitespace-stripped", "256-chars", "256-after-strip"],
)
async def test_create(live: Stack, body: str) -> None:
    alice, client = await writer(live)
    post = await create(client, alice, body, request_id=7)
    assert await retrieve(client, post["pk"]) == ok("retrieve", post, "r")


BAD_BODIES = [
    ({}, "This field is required."),
    ({"body": ""}, "This field may not be blank."),
    ({"body": " \n\t "}, "This field may not be blank."),
    ({"body": None}, "This field may not be null."),
    ({"body": 5}, "Not a valid string."),
    ({"body": 1.5}, "Not a valid string."),
    ({"body": True}, "Not a valid string."),
    ({"body": ["x"]}, "Not a valid string."),
    ({"body": {"x": 1}}, "Not a valid string."),
    ({"body": "x" * 257}, "Ensure this field has no more than 256 characters."),
]
BAD_BODY_IDS = ["missing", "empty", "blank", "null", "int", "float", "bool", "list", "object"]
BAD_BODY_IDS += ["257-chars"]


@pytest.mark.parametrize(("data", "message"), BAD_BODIES, ids=BAD_BODY_IDS)
async def test_create_invalid_body(live: Stack, data: dict[str, Any], message: str) -> None:
    _, client = await writer(live)
    request = {"action": "create", "data": data, "request_id": 8}
    assert await client.ask(request) == fail("create", 400, [{"body": [message]}], 8)
    await assert_open(client)


@pytest.mark.parametrize(("data", "kind"), [("x", "str"), ([1], "list"), (5, "int")])
async def test_create_data_not_an_object(live: Stack, data: Any, kind: str) -> None:
    _, client = await writer(live)
    reply = await client.ask({"action": "create", "data": data, "request_id": 9})
    message = f"Invalid data. Expected a dictionary, but got {kind}."
    assert reply == fail("create", 400, [{"non_field_errors": [message]}], 9)


async def test_create_data_null(live: Stack) -> None:
    # Where PROTOCOL.md is silent, DCRF decides: DRF's Serializer(data=None).errors is
    # {"non_field_errors": ["No data provided"]} (the special case in Serializer.errors).
    _, client = await writer(live)
    reply = await client.ask({"action": "create", "data": None, "request_id": 9})
    assert reply == fail("create", 400, [{"non_field_errors": ["No data provided"]}], 9)


async def test_create_data_missing(live: Stack) -> None:
    _, client = await writer(live)
    reply = await client.ask({"action": "create", "request_id": 10})
    assert reply == fail("create", 400, required("data"), 10)


# --- update and patch ----------------------------------------------------------------------


async def test_update(live: Stack) -> None:
    alice, client = await writer(live)
    post = await create(client, alice, "before")
    reply = await client.ask(
        {"action": "update", "pk": post["pk"], "data": {"body": "  after  "}, "request_id": 11}
    )
    updated = {**post, "body": "after", "version": 2}
    assert reply == ok("update", updated, 11)
    assert await retrieve(client, post["pk"]) == ok("retrieve", updated, "r")


@pytest.mark.parametrize("action", ["update", "patch"])
@pytest.mark.parametrize("body", ["same", "  same \n"], ids=["identical", "differs-in-whitespace"])
async def test_write_that_changes_nothing_keeps_the_version(
    live: Stack, action: str, body: str
) -> None:
    alice, client = await writer(live)
    post = await create(client, alice, "same")
    request = {"action": action, "pk": post["pk"], "data": {"body": body}, "request_id": 12}
    assert await client.ask(request) == ok(action, post, 12)
    assert await retrieve(client, post["pk"]) == ok("retrieve", post, "r")


@pytest.mark.parametrize("action", ["update", "patch"])
async def test_update_not_found(live: Stack, action: str) -> None:
    _, client = await writer(live)
    request = {"action": action, "pk": ABSENT_PK, "data": {"body": "x"}, "request_id": 13}
    assert await client.ask(request) == fail(action, 404, NOT_FOUND, 13)
    # The lookup comes before validation, as in DRF: 404 even for an invalid body.
    request = {"action": action, "pk": ABSENT_PK, "data": {"body": ""}, "request_id": 14}
    assert await client.ask(request) == fail(action, 404, NOT_FOUND, 14)


@pytest.mark.parametrize("action", ["update", "patch", "delete"])
async def test_another_users_post_is_not_found(live: Stack, action: str) -> None:
    alice, alices = await writer(live)
    _, bobs = await writer(live)
    post = await create(alices, alice, "alice's")
    for body in ["bob's", ""]:  # a valid and an invalid body: 404 either way
        request = {"action": action, "pk": post["pk"], "data": {"body": body}, "request_id": 15}
        assert await bobs.ask(request) == fail(action, 404, NOT_FOUND, 15)
    assert await retrieve(bobs, post["pk"]) == ok("retrieve", post, "r")


@pytest.mark.parametrize("action", ["update", "patch"])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "This field may not be blank."),
        (None, "This field may not be null."),
        (7, "Not a valid string."),
        ("y" * 257, "Ensure this field has no more than 256 characters."),
    ],
    ids=["blank", "null", "int", "too-long"],
)
async def test_update_invalid_body(live: Stack, action: str, body: Any, message: str) -> None:
    alice, client = await writer(live)
    post = await create(client, alice, "valid")
    request = {"action": action, "pk": post["pk"], "data": {"body": body}, "request_id": 16}
    assert await client.ask(request) == fail(action, 400, [{"body": [message]}], 16)
    assert await retrieve(client, post["pk"]) == ok("retrieve", post, "r")


async def test_update_requires_body_but_patch_does_not(live: Stack) -> None:
    alice, client = await writer(live)
    post = await create(client, alice, "kept")
    update = {"action": "update", "pk": post["pk"], "data": {}, "request_id": 17}
    assert await client.ask(update) == fail("update", 400, required("body"), 17)
    # A patch without body changes nothing: the same post, the same version.
    patch = {"action": "patch", "pk": post["pk"], "data": {}, "request_id": 18}
    assert await client.ask(patch) == ok("patch", post, 18)
    # Read-only fields in a patch are ignored, as DRF ignores them.
    patch["data"] = {"version": 99, "author": 0, "pk": 1}
    assert await client.ask(patch) == ok("patch", post, 18)


async def test_patch(live: Stack) -> None:
    alice, client = await writer(live)
    post = await create(client, alice, "first")
    request = {"action": "patch", "pk": post["pk"], "data": {"body": "second"}, "request_id": 19}
    second = {**post, "body": "second", "version": 2}
    assert await client.ask(request) == ok("patch", second, 19)
    request["data"] = {"body": "third"}
    third = {**post, "body": "third", "version": 3}
    assert await client.ask(request) == ok("patch", third, 19)


@pytest.mark.parametrize("action", ["update", "patch"])
async def test_update_data_errors(live: Stack, action: str) -> None:
    alice, client = await writer(live)
    post = await create(client, alice, "x")
    request = {"action": action, "pk": post["pk"], "request_id": 20}
    assert await client.ask(request) == fail(action, 400, required("data"), 20)
    request["data"] = "text"
    message = "Invalid data. Expected a dictionary, but got str."
    assert await client.ask(request) == fail(action, 400, [{"non_field_errors": [message]}], 20)


# --- delete --------------------------------------------------------------------------------


async def test_delete(live: Stack) -> None:
    alice, client = await writer(live)
    post = await create(client, alice, "short-lived")
    request = {"action": "delete", "pk": post["pk"], "request_id": 21}
    assert await client.ask(request) == ok("delete", None, 21, 204)
    assert await retrieve(client, post["pk"], 22) == fail("retrieve", 404, NOT_FOUND, 22)
    assert await client.ask(request) == fail("delete", 404, NOT_FOUND, 21)


@pytest.mark.parametrize("pk", [ABSENT_PK, "abc", None], ids=["absent", "not-integer", "null"])
async def test_delete_not_found(live: Stack, pk: Any) -> None:
    _, client = await writer(live)
    request = {"action": "delete", "pk": pk, "request_id": 23}
    assert await client.ask(request) == fail("delete", 404, NOT_FOUND, 23)


# --- hashtag subscriptions -----------------------------------------------------------------


@pytest.mark.parametrize("form", ["{t}", "{T}", "#{t}", "#{T}"])
async def test_subscribe_forms_name_one_hashtag(live: Stack, form: str) -> None:
    alice, client = await writer(live)
    tag = unique("tag")
    hashtag = form.format(t=tag, T=tag.upper())
    offset = await subscribe(client, hashtag, 24)  # asserts the whole 201 reply
    # The subscription is to the lowercase tag: a post with it produces one event.
    post = await create(client, alice, f"about #{tag}")
    received = await client.recv()
    assert received == event("create", post["pk"], post, 24)
    assert received["offset"] > offset  # committed after the reply: later in the log
    # Unsubscribing with another spelling of the same tag ends it.
    request = {"action": "unsubscribe_from_hashtag", "hashtag": f"#{tag.upper()}", "request_id": 24}
    assert await client.ask(request) == ok("unsubscribe_from_hashtag", {}, 24, 204)
    await create(client, alice, f"again #{tag}")
    await barrier(live, alice, client)  # would fail on any event of the second post


@pytest.mark.parametrize("hashtag", ["python", "Python", "#python", "#PYTHON"])
async def test_subscribe_reply(live: Stack, hashtag: str) -> None:
    # The literal spellings from PROTOCOL.md; unsubscribed at once, so nothing else arrives.
    _, client = await writer(live)
    await subscribe(client, hashtag, 102)  # 201, data {"offset": <the log's current end>}
    unsubscribe = {"action": "unsubscribe_from_hashtag", "hashtag": hashtag, "request_id": 103}
    assert await client.ask(unsubscribe) == ok("unsubscribe_from_hashtag", {}, 103, 204)


async def test_unsubscribe_when_not_subscribed(live: Stack) -> None:
    _, client = await writer(live)
    request = {"action": "unsubscribe_from_hashtag", "hashtag": unique("tag"), "request_id": 25}
    assert await client.ask(request) == ok("unsubscribe_from_hashtag", {}, 25, 204)


BAD_HASHTAGS = ["", "#", "py thon", "c++", "##python", "école", 5, None, True, ["x"]]


@pytest.mark.parametrize("action", ["subscribe_to_hashtag", "unsubscribe_from_hashtag"])
@pytest.mark.parametrize("hashtag", BAD_HASHTAGS, ids=[json.dumps(h) for h in BAD_HASHTAGS])
async def test_bad_hashtag(live: Stack, action: str, hashtag: Any) -> None:
    _, client = await writer(live)
    request = {"action": action, "hashtag": hashtag, "request_id": 26}
    assert await client.ask(request) == fail(
        action, 400, [{"hashtag": ["Enter a valid hashtag."]}], 26
    )
    await assert_open(client)


@pytest.mark.parametrize("action", ["subscribe_to_hashtag", "unsubscribe_from_hashtag"])
async def test_missing_hashtag(live: Stack, action: str) -> None:
    _, client = await writer(live)
    assert await client.ask({"action": action, "request_id": 27}) == fail(
        action, 400, required("hashtag"), 27
    )


# --- anonymous connections and unknown actions ---------------------------------------------


async def test_anonymous_may_list_retrieve_and_authenticate(live: Stack) -> None:
    alice, alices = await writer(live)
    marker = unique("m")
    post = await create(alices, alice, f"{marker} public")
    anonymous = await live.connect()
    assert await listing(anonymous, 28, body_contains=marker) == ok("list", [post], 28)
    assert await retrieve(anonymous, post["pk"], 29) == ok("retrieve", post, 29)
    request = {"action": "authenticate", "token": alice.token, "request_id": 30}
    assert await anonymous.ask(request) == ok("authenticate", {"user": alice.id}, 30)


ANONYMOUS_DENIED = [
    {"action": "create", "data": {"body": "x"}},
    {"action": "update", "pk": 1, "data": {"body": "x"}},
    {"action": "patch", "pk": 1, "data": {"body": "x"}},
    {"action": "delete", "pk": 1},
    {"action": "subscribe_to_hashtag", "hashtag": "python"},
    {"action": "unsubscribe_from_hashtag", "hashtag": "python"},
    # Permissions come before the action lookup, so unknown actions are 403 too.
    {"action": "foo"},
    {"action": "LIST"},
    {"action": None},
    # Invalid parameters do not matter either: the permission check comes first.
    {"action": "create"},
    {"action": "subscribe_to_hashtag", "hashtag": ""},
]


@pytest.mark.parametrize(
    "request_", ANONYMOUS_DENIED, ids=[json.dumps(r, sort_keys=True) for r in ANONYMOUS_DENIED]
)
async def test_anonymous_is_denied(live: Stack, request_: dict[str, Any]) -> None:
    client = await live.connect()
    reply = await client.ask({**request_, "request_id": 31})
    assert reply == fail(request_["action"], 403, DENIED, 31)
    await assert_open(client)


@pytest.mark.parametrize("action", ["foo", "LIST", "list ", "", 5])
async def test_unknown_action(live: Stack, action: Any) -> None:
    _, client = await writer(live)
    reply = await client.ask({"action": action, "request_id": 32})
    assert reply == fail(action, 405, [f'Method "{action}" not allowed.'], 32)
    await assert_open(client)


async def test_missing_action(live: Stack) -> None:
    _, client = await writer(live)
    reply = await client.ask({"pk": 1, "request_id": 33})
    assert reply == fail(None, 405, ["Unable to find action in message body."], 33)
    await assert_open(client)


# --- request_id ----------------------------------------------------------------------------

REQUEST_IDS = [7, 0, -3, "abc", "", "ünïcødé ✓", None, True, [1, "x", None], {"a": [1, {}]}]
REQUEST_IDS += [1.5, 2**63, 2**64, 2**70, -(2**70), 10**30 + 1]  # beyond 64 bits too


def exactly(value: Any) -> str:
    """JSON text of a value: unlike ==, tells 2**70 from 1.18e21 and true from 1."""
    return json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("request_id", REQUEST_IDS, ids=[json.dumps(r) for r in REQUEST_IDS])
async def test_request_id_is_echoed_verbatim(live: Stack, request_id: Any) -> None:
    client = await live.connect()
    marker = unique("m")
    replies = [
        (await listing(client, request_id, body_contains=marker), ok("list", [], request_id)),
        (
            await retrieve(client, ABSENT_PK, request_id),
            fail("retrieve", 404, NOT_FOUND, request_id),
        ),
        (
            await client.ask(
                wrapped({"action": "list", "body_contains": marker, "request_id": request_id})
            ),
            wrapped(ok("list", [], request_id)),
        ),
    ]
    for reply, expected in replies:
        assert reply == expected
        assert exactly(reply) == exactly(expected)


async def test_missing_request_id_is_null(live: Stack) -> None:
    client = await live.connect()
    marker = unique("m")
    assert await client.ask({"action": "list", "body_contains": marker}) == ok("list", [], None)
    assert await client.ask({"action": "create"}) == fail("create", 403, DENIED, None)


# --- malformed input: a reply, and the connection stays open -------------------------------

MALFORMED: list[tuple[str | bytes, str]] = [
    ("not json", "Invalid JSON."),
    ("", "Invalid JSON."),
    ('{"action": "list"', "Invalid JSON."),
    ("{'action': 'list'}", "Invalid JSON."),
    ('{"action": "list", "request_id": NaN}', "Invalid JSON."),
    ('{"action": "list", "limit": Infinity}', "Invalid JSON."),
    ("-Infinity", "Invalid JSON."),
    ('[{"action": "list"}]', "Expected a JSON object."),
    ("5", "Expected a JSON object."),
    ('"list"', "Expected a JSON object."),
    ("null", "Expected a JSON object."),
    ("true", "Expected a JSON object."),
    (b"\x00\xff binary", "Expected a text frame."),
    (b'{"action": "list", "request_id": 1}', "Expected a text frame."),
]


@pytest.mark.parametrize(("frame", "error"), MALFORMED, ids=[repr(f)[:40] for f, _ in MALFORMED])
async def test_malformed_frame(live: Stack, frame: str | bytes, error: str) -> None:
    client = await live.connect()
    await client.send(frame)
    # Nothing of a frame that is no request is echoed: action and request_id are null.
    assert await client.recv() == fail(None, 400, [error], None)
    await assert_open(client)


async def test_malformed_frame_on_authenticated_connection(live: Stack) -> None:
    alice, client = await writer(live)
    await client.send("{nope")
    assert await client.recv() == fail(None, 400, ["Invalid JSON."], None)
    # Still authenticated as before.
    await create(client, alice, "after garbage")


# --- multiplexed frames --------------------------------------------------------------------


async def test_multiplexed_requests_are_answered_wrapped(live: Stack) -> None:
    alice, client = await writer(live)
    marker = unique("m")
    reply = await client.ask(
        wrapped({"action": "create", "data": {"body": f"{marker} wrapped"}, "request_id": 34})
    )
    post = new_post(reply["payload"]["data"], alice, f"{marker} wrapped")
    assert reply == wrapped(ok("create", post, 34, 201))
    listed = await client.ask(
        wrapped({"action": "list", "body_contains": marker, "request_id": 35})
    )
    assert listed == wrapped(ok("list", [post], 35))
    missing = await client.ask(wrapped({"action": "retrieve", "pk": ABSENT_PK, "request_id": 36}))
    assert missing == wrapped(fail("retrieve", 404, NOT_FOUND, 36))
    no_action = await client.ask(wrapped({"request_id": 37}))
    assert no_action == wrapped(fail(None, 405, ["Unable to find action in message body."], 37))


async def test_multiplexed_anonymous_is_denied_wrapped(live: Stack) -> None:
    client = await live.connect()
    reply = await client.ask(wrapped({"action": "create", "data": {"body": "x"}, "request_id": 38}))
    assert reply == wrapped(fail("create", 403, DENIED, 38))


async def test_unknown_stream(live: Stack) -> None:
    client = await live.connect()
    reply = await client.ask(wrapped({"action": "list", "request_id": 39}, stream="other"))
    assert reply == wrapped(fail("list", 404, ["Unknown stream."], 39), stream="other")
    await assert_open(client)


async def test_multiplexed_payload_not_an_object(live: Stack) -> None:
    client = await live.connect()
    reply = await client.ask({"stream": "posts", "payload": 5})
    assert reply == wrapped(fail(None, 400, ["Expected a JSON object."], None))
    await assert_open(client)


async def test_bare_and_wrapped_frames_mix_on_one_connection(live: Stack) -> None:
    alice, client = await writer(live)
    marker = unique("m")
    bare = await create(client, alice, f"{marker} bare", request_id=40)
    reply = await client.ask(
        wrapped({"action": "create", "data": {"body": f"{marker} wrapped"}, "request_id": 40})
    )
    inner = new_post(reply["payload"]["data"], alice, f"{marker} wrapped")
    assert reply == wrapped(ok("create", inner, 40, 201))
    both = [inner, bare]
    assert await listing(client, 41, body_contains=marker) == ok("list", both, 41)
    wrapped_list = wrapped({"action": "list", "body_contains": marker, "request_id": 41})
    assert await client.ask(wrapped_list) == wrapped(ok("list", both, 41))
    assert await listing(client, 42, body_contains=marker, limit=1) == ok("list", [inner], 42)


# --- handshake authentication --------------------------------------------------------------


@pytest.mark.parametrize("via", ["query", "header", "lowercase-scheme"])
async def test_handshake_token(live: Stack, via: str) -> None:
    alice = await live.user()
    if via == "query":
        client = await live.connect(query=f"?token={alice.token}")
    else:
        scheme = "Bearer" if via == "header" else "bearer"
        client = await live.connect(headers={"Authorization": f"{scheme} {alice.token}"})
    await create(client, alice, "authenticated at the handshake")


async def test_handshake_bad_tokens_are_refused(live: Stack) -> None:
    alice = await live.user()
    bad = {
        "garbage": "not-a-jwt",
        "tampered": alice.token[:-4] + ("AAAA" if not alice.token.endswith("AAAA") else "BBBB"),
        "other-secret": issue_token(alice.id, "another-secret-" + "y" * 32, 60),
        "expired": expired_token(live, alice),
        "no-such-user": issue_token(2**40, live.settings.secret, 60),
    }
    for token in bad.values():
        await assert_refused(live, query=f"?token={token}")
        await assert_refused(live, headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Token abc", "{token}", "Bearer  "]
)
async def test_handshake_malformed_authorization_is_refused(live: Stack, header: str) -> None:
    alice = await live.user()
    await assert_refused(live, headers={"Authorization": header.format(token=alice.token)})


async def test_handshake_without_token_is_anonymous(live: Stack) -> None:
    client = await live.connect()
    assert await client.ask({"action": "delete", "pk": 1, "request_id": 43}) == fail(
        "delete", 403, DENIED, 43
    )


# --- the authenticate action ---------------------------------------------------------------


async def test_authenticate_anonymous_connection(live: Stack) -> None:
    alice = await live.user()
    client = await live.connect()
    request = {"action": "authenticate", "token": alice.token, "request_id": 44}
    assert await client.ask(request) == ok("authenticate", {"user": alice.id}, 44)
    await create(client, alice, "now authenticated")


async def test_authenticate_switches_user(live: Stack) -> None:
    _, client = await writer(live)
    bob = await live.user()
    request = {"action": "authenticate", "token": bob.token, "request_id": 45}
    assert await client.ask(request) == ok("authenticate", {"user": bob.id}, 45)
    await create(client, bob, "written as bob")


def bad_tokens(live: Stack, user: User) -> dict[str, Any]:
    return {
        "garbage": "not-a-jwt",
        "empty": "",
        "other-secret": issue_token(user.id, "another-secret-" + "y" * 32, 60),
        "expired": expired_token(live, user),
        "no-such-user": issue_token(2**40, live.settings.secret, 60),
        "number": 5,
        "null": None,
        "object": {"token": user.token},
    }


async def test_authenticate_bad_token_leaves_anonymous(live: Stack) -> None:
    alice = await live.user()
    client = await live.connect()
    for name, token in bad_tokens(live, alice).items():
        request = {"action": "authenticate", "token": token, "request_id": name}
        assert await client.ask(request) == fail("authenticate", 401, ["Invalid token."], name)
        create_request = {"action": "create", "data": {"body": "x"}, "request_id": name}
        assert await client.ask(create_request) == fail("create", 403, DENIED, name)


async def test_authenticate_bad_token_keeps_previous_user(live: Stack) -> None:
    alice, client = await writer(live)
    for name, token in bad_tokens(live, alice).items():
        request = {"action": "authenticate", "token": token, "request_id": name}
        assert await client.ask(request) == fail("authenticate", 401, ["Invalid token."], name)
        await create(client, alice, f"still alice after {name}")


async def test_expired_token_makes_connection_anonymous(
    live: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server runs in this process, so instead of sleeping past the token's expiry the
    # protocol session's clock is moved forward (only that module's view of time).
    alice, client = await writer(live)
    await create(client, alice, "before expiry")
    lifetime = live.settings.token_lifetime_minutes * 60
    later = time.time() + lifetime + 60
    monkeypatch.setattr(session_module, "time", SimpleNamespace(time=lambda: later))

    request = {"action": "create", "data": {"body": "after expiry"}, "request_id": 46}
    assert await client.ask(request) == fail("create", 403, DENIED, 46)
    assert await listing(client, 47, body_contains=unique("m")) == ok("list", [], 47)
    # A token valid at the (moved) clock authenticates again.
    fresh = issue_token(alice.id, live.settings.secret, lifetime * 3)
    auth = {"action": "authenticate", "token": fresh, "request_id": 48}
    assert await client.ask(auth) == ok("authenticate", {"user": alice.id}, 48)
    await create(client, alice, "after re-authenticating")


# --- ordering ------------------------------------------------------------------------------


async def test_requests_are_answered_in_order(live: Stack) -> None:
    alice, client = await writer(live)
    marker = unique("m")
    anchor = await create(client, alice, f"{marker} anchor")
    tag = unique("tag")  # no post carries it: subscribing produces no events
    kinds: list[tuple[dict[str, Any] | str, Any, int]] = [
        ({"action": "create", "data": {"body": f"{marker} new"}}, "create", 201),
        ({"action": "list", "body_contains": marker, "limit": 1}, "list", 200),
        ({"action": "retrieve", "pk": anchor["pk"]}, "retrieve", 200),
        ({"action": "retrieve", "pk": ABSENT_PK}, "retrieve", 404),
        ({"action": "patch", "pk": anchor["pk"], "data": {"body": f"{marker} p"}}, "patch", 200),
        ({"action": "subscribe_to_hashtag", "hashtag": tag}, "subscribe_to_hashtag", 201),
        ({"action": "unsubscribe_from_hashtag", "hashtag": tag}, "unsubscribe_from_hashtag", 204),
        ({"action": "list", "limit": 0}, "list", 400),
        ({"action": "nope"}, "nope", 405),
        ("not json", None, 400),
    ]
    expected: list[tuple[Any, Any, int]] = []
    for n in range(50):
        request, action, status = kinds[n % len(kinds)]
        if isinstance(request, str):
            await client.send(request)
            expected.append((None, action, status))
        else:
            await client.send({**request, "request_id": n})
            expected.append((n, action, status))
    replies = [await client.recv() for _ in range(50)]
    got = [(r["request_id"], r["action"], r["response_status"]) for r in replies]
    assert got == expected
    # The creates were applied in the order they were sent.
    created = [r["data"] for r in replies if r["action"] == "create"]
    assert [p["pk"] for p in created] == sorted(p["pk"] for p in created)
