"""Hashtag events: PROTOCOL.md "Subscriptions and events", checked frame by frame.

Every test runs on each stack. "No event" is always proven with `barrier`, never by waiting.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.pubsub.channels import channel_for
from tests.support import (
    OFFSET,
    SAFE,
    Stack,
    User,
    WsClient,
    barrier,
    fail,
    ok,
    post_json,
    run_cli,
    subscribe,
    subscribed,
    unique,
    wrapped,
)

SUB = 102  # the request_id the seed's example subscribes with

BLANK = "This field may not be blank."
NOT_FOUND = ["Not found"]


# ---- expected frames ---------------------------------------------------------------------------


def event(action: str, post: dict[str, Any], request_id: Any) -> dict[str, Any]:
    """The event a subscription gets; a delete carries only the pk."""
    data = {"pk": post["pk"]} if action == "delete" else post
    return {
        "action": action,
        "pk": post["pk"],
        "data": data,
        "offset": OFFSET,
        "safe": SAFE,
        "request_id": request_id,
    }


# ---- writes ------------------------------------------------------------------------------------


async def ws_create(client: WsClient, body: str, request_id: Any = 1) -> dict[str, Any]:
    """Create over the socket; the next frame must be the reply (so it precedes any event)."""
    reply = await client.ask({"action": "create", "data": {"body": body}, "request_id": request_id})
    post = post_json(reply["data"])
    assert reply == ok("create", post, request_id, 201)
    assert post["body"] == body.strip() and post["version"] == 1
    return post


async def ws_update(
    client: WsClient, post: dict[str, Any], body: str, action: str = "update", request_id: Any = 2
) -> dict[str, Any]:
    """Update (or patch) the body; the reply is the post with the new body and next version."""
    request = {"action": action, "pk": post["pk"], "data": {"body": body}, "request_id": request_id}
    reply = await client.ask(request)
    changed = {**post, "body": body.strip(), "version": post["version"] + 1}
    assert reply == ok(action, changed, request_id, 200)
    return changed


async def ws_delete(client: WsClient, post: dict[str, Any], request_id: Any = 3) -> None:
    reply = await client.ask({"action": "delete", "pk": post["pk"], "request_id": request_id})
    assert reply == ok("delete", None, request_id, 204)


async def ws_retrieve(client: WsClient, pk: int) -> dict[str, Any]:
    reply = await client.ask({"action": "retrieve", "pk": pk, "request_id": "get"})
    assert reply == ok("retrieve", reply["data"], "get", 200)
    return post_json(reply["data"])


async def rest(
    live: Stack, user: User, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    """One REST call as user; the caller checks the status."""
    async with live.http() as http:
        return await http.request(method, path, json=body, headers=user.headers)


async def unsubscribe(client: WsClient, tag: str, request_id: Any) -> None:
    request = {"action": "unsubscribe_from_hashtag", "hashtag": tag, "request_id": request_id}
    assert await client.ask(request) == ok("unsubscribe_from_hashtag", {}, request_id, 204)


async def recv_all(client: WsClient, count: int) -> list[Any]:
    return [await client.recv() for _ in range(count)]


def by_request_id(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events of several subscriptions have no promised order among themselves."""
    return sorted(frames, key=lambda frame: str(frame["request_id"]))


# ---- create ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subscribed", "body"),
    [
        pytest.param("{tag}", "hello #{tag}", id="plain"),
        pytest.param("{tag}", "Check this #{TAG}", id="body-uppercase"),
        pytest.param("#{TAG}", "#{tag}!", id="subscribe-hash-uppercase"),
        pytest.param("{tag}", "#other{tag} and #{tag}, twice #{tag}", id="among-others"),
        # `#c++` is `c`, `#python3.10` is `python3`: a tag ends at the first other character.
        pytest.param("{tag}", "#{TAG}++ and #{tag}.10", id="punctuation-ends-tag"),
    ],
)
async def test_create_with_subscribed_tag_is_a_create_event(
    live: Stack, subscribed: str, body: str
) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    await subscribe(sub, subscribed.format(tag=tag, TAG=tag.upper()), SUB)
    writer = await live.connect(bob)
    post = await ws_create(writer, body.format(tag=tag, TAG=tag.upper()))
    assert await sub.recv() == event("create", post, SUB)
    await barrier(live, bob, sub, writer)  # exactly one event


async def test_post_without_the_tag_is_no_event(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    await subscribe(sub, tag, SUB)
    writer = await live.connect(bob)
    # No tag; another tag; the word without '#'; a longer tag the subscribed one is a prefix of;
    # '#' in front of a non-matching character.
    for body in ["no tags", f"#x{tag}", f"plain {tag}", f"#{tag}0", f"# {tag}", f"#_{tag}"]:
        await ws_create(writer, body)
    await barrier(live, bob, sub, writer)


@pytest.mark.parametrize(
    "request_id",
    [
        pytest.param(102, id="int"),
        "sub-a",
        {"nested": [1, None]},
        1.5,
        pytest.param(None, id="null"),
    ],
)
async def test_event_echoes_the_subscribing_request_id(live: Stack, request_id: Any) -> None:
    alice = await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    await subscribe(sub, tag, request_id)
    post = await ws_create(await live.connect(alice), f"#{tag}")
    assert await sub.recv() == event("create", post, request_id)


async def test_subscribe_without_request_id_is_the_null_subscription(live: Stack) -> None:
    alice = await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    reply = await sub.ask({"action": "subscribe_to_hashtag", "hashtag": tag})
    assert reply == subscribed(reply, None)
    # An explicit null names the same subscription: one event, not two.
    await subscribe(sub, tag, None)
    post = await ws_create(await live.connect(alice), f"#{tag}")
    assert await sub.recv() == event("create", post, None)
    await barrier(live, alice, sub)


# ---- update and delete -------------------------------------------------------------------------

# (body before, body after, subscribed tags, expected action or None): the per-subscription
# diff of old and new hashtags.
TRANSITIONS = [
    pytest.param("#{a} first", "#{a} second", ["a"], "update", id="keeps-tag"),
    pytest.param("no tag yet", "now #{a}", ["a"], "create", id="adds-tag"),
    pytest.param("#{b}", "#{a}", ["a"], "create", id="b-to-a-subscribed-a"),
    pytest.param("#{a} here", "gone", ["a"], "delete", id="removes-tag"),
    pytest.param("#{a}", "#{b}", ["a"], "delete", id="a-to-b-subscribed-a"),
    pytest.param("#{a}", "#{b}", ["a", "b"], "update", id="a-to-b-subscribed-ab"),
    pytest.param("#{a} #{b}", "#{b}", ["a", "b"], "update", id="drops-one-of-two"),
    pytest.param("#{b}", "#{b} edited", ["a"], None, id="unrelated-tag"),
]


@pytest.mark.parametrize("action", ["update", "patch"])
@pytest.mark.parametrize(("before", "after", "subscribed", "expected"), TRANSITIONS)
async def test_update_event_follows_the_tag_diff(
    live: Stack,
    action: str,
    before: str,
    after: str,
    subscribed: list[str],
    expected: str | None,
) -> None:
    alice, bob = await live.user(), await live.user()
    tags = {"a": unique("a"), "b": unique("b")}
    writer = await live.connect(bob)
    # Written before anyone subscribes, so only the update can raise an event.
    post = await ws_create(writer, before.format(**tags))
    sub = await live.connect(alice)
    for name in subscribed:
        await subscribe(sub, tags[name], SUB)
    changed = await ws_update(writer, post, after.format(**tags), action)
    assert changed["version"] == 2
    if expected is not None:
        assert await sub.recv() == event(expected, changed, SUB)
    await barrier(live, bob, sub, writer)


@pytest.mark.parametrize(
    "writer_subscribed", [True, False], ids=["writer-subscribed", "other-subscriber"]
)
async def test_lifecycle_events_carry_each_new_version(
    live: Stack, writer_subscribed: bool
) -> None:
    """create -> update -> patch -> delete: one event each, data the post of the write's reply.

    When the writer's own connection is subscribed, `ws_*` take the next frame as the reply,
    so this also proves the reply precedes its event on that connection."""
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    writer = await live.connect(bob)
    sub = writer if writer_subscribed else await live.connect(alice)
    await subscribe(sub, tag, SUB)

    post = await ws_create(writer, f"first #{tag}")
    assert await sub.recv() == event("create", post, SUB)
    post = await ws_update(writer, post, f"second #{tag}")
    assert await sub.recv() == event("update", post, SUB)
    assert post["version"] == 2
    post = await ws_update(writer, post, f"third #{tag}", "patch")
    assert await sub.recv() == event("update", post, SUB)
    assert post["version"] == 3
    await ws_delete(writer, post)
    assert await sub.recv() == event("delete", post, SUB)
    await barrier(live, bob, *dict.fromkeys([sub, writer]))  # each connection once


# ---- no change, no event -----------------------------------------------------------------------

BODY = "same body #{tag}"
# (transport, method, request data): writes that change nothing.
NO_OPS = [
    pytest.param("ws", "update", {"body": BODY}, id="ws-update-same"),
    pytest.param("ws", "update", {"body": f"  {BODY}\n\t"}, id="ws-update-whitespace"),
    pytest.param("ws", "patch", {"body": BODY}, id="ws-patch-same"),
    pytest.param("ws", "patch", {"body": f"\n{BODY} "}, id="ws-patch-whitespace"),
    pytest.param("ws", "patch", {}, id="ws-patch-without-body"),
    pytest.param("rest", "PUT", {"body": BODY}, id="rest-put-same"),
    pytest.param("rest", "PUT", {"body": f" {BODY}  "}, id="rest-put-whitespace"),
    pytest.param("rest", "PATCH", {"body": f"{BODY}\n"}, id="rest-patch-whitespace"),
    pytest.param("rest", "PATCH", {}, id="rest-patch-without-body"),
]


@pytest.mark.parametrize(("transport", "method", "data"), NO_OPS)
async def test_write_that_changes_nothing_is_no_event_and_same_version(
    live: Stack, transport: str, method: str, data: dict[str, str]
) -> None:
    alice = await live.user()
    tag = unique("tag")
    writer = await live.connect(alice)
    await subscribe(writer, tag, SUB)
    post = await ws_create(writer, BODY.format(tag=tag))
    assert await writer.recv() == event("create", post, SUB)

    data = {key: value.format(tag=tag) for key, value in data.items()}
    if transport == "ws":
        request = {"action": method, "pk": post["pk"], "data": data, "request_id": 7}
        assert await writer.ask(request) == ok(method, post, 7, 200)
    else:
        response = await rest(live, alice, method, f"/posts/{post['pk']}", data)
        assert (response.status_code, response.json()) == (200, post)
    await barrier(live, alice, writer)
    assert await ws_retrieve(writer, post["pk"]) == post


# ---- failed writes -----------------------------------------------------------------------------

# (whose post, action, request data, status, errors): refused writes on a tagged post.
WS_FAILURES = [
    pytest.param("own", "update", {"body": ""}, 400, [{"body": [BLANK]}], id="blank"),
    pytest.param("own", "update", {"body": " \n "}, 400, [{"body": [BLANK]}], id="whitespace"),
    pytest.param("own", "patch", {"body": "\t"}, 400, [{"body": [BLANK]}], id="patch-blank"),
    pytest.param(
        "own", "update", {"body": None}, 400, [{"body": ["This field may not be null."]}], id="null"
    ),
    pytest.param(
        "own", "update", {"body": 7}, 400, [{"body": ["Not a valid string."]}], id="number"
    ),
    pytest.param(
        "own", "update", {}, 400, [{"body": ["This field is required."]}], id="missing-body"
    ),
    pytest.param(
        "own",
        "update",
        {"body": "#{tag} " + "x" * 256},
        400,
        [{"body": ["Ensure this field has no more than 256 characters."]}],
        id="too-long",
    ),
    pytest.param("other", "update", {"body": "mine #{tag}"}, 404, NOT_FOUND, id="others-update"),
    pytest.param("other", "patch", {"body": "mine"}, 404, NOT_FOUND, id="others-patch"),
    pytest.param("other", "delete", None, 404, NOT_FOUND, id="others-delete"),
]


@pytest.mark.parametrize(("whose", "action", "data", "status", "errors"), WS_FAILURES)
async def test_failed_ws_write_is_no_event(
    live: Stack,
    whose: str,
    action: str,
    data: dict[str, Any] | None,
    status: int,
    errors: list[Any],
) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    owner = await live.connect(bob)
    post = await ws_create(owner, f"original #{tag}")
    # Both the owner's and the writer's connections follow the tag.
    await subscribe(owner, tag, SUB)
    writer = owner if whose == "own" else await live.connect(alice)
    if writer is not owner:
        await subscribe(writer, tag, SUB)

    request: dict[str, Any] = {"action": action, "pk": post["pk"], "request_id": 9}
    if data is not None:
        request["data"] = {
            key: value.format(tag=tag) if isinstance(value, str) else value
            for key, value in data.items()
        }
    assert await writer.ask(request) == fail(action, status, errors, 9)
    await barrier(live, bob, *dict.fromkeys([owner, writer]))  # each connection once
    assert await ws_retrieve(owner, post["pk"]) == post


@pytest.mark.parametrize(
    ("whose", "method", "body", "status"),
    [
        pytest.param("own", "PUT", {"body": "   "}, 422, id="put-blank"),
        pytest.param("own", "PATCH", {"body": "\n"}, 422, id="patch-blank"),
        pytest.param("own", "PUT", {}, 422, id="put-missing-body"),
        pytest.param("other", "PUT", {"body": "mine #{tag}"}, 404, id="others-put"),
        pytest.param("other", "PATCH", {"body": "mine"}, 404, id="others-patch"),
        pytest.param("other", "DELETE", None, 404, id="others-delete"),
    ],
)
async def test_failed_rest_write_is_no_event(
    live: Stack, whose: str, method: str, body: dict[str, str] | None, status: int
) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    owner = await live.connect(bob)
    post = await ws_create(owner, f"original #{tag}")
    await subscribe(sub, tag, SUB)

    writer = bob if whose == "own" else alice
    if body is not None:
        body = {key: value.format(tag=tag) for key, value in body.items()}
    response = await rest(live, writer, method, f"/posts/{post['pk']}", body)
    assert response.status_code == status, response.text
    if status == 404:
        assert response.json() == {"detail": "Not found"}
    await barrier(live, bob, sub)
    assert await ws_retrieve(sub, post["pk"]) == post


# ---- one event per subscription ----------------------------------------------------------------


async def test_one_event_per_subscription_however_many_tags_match(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    a, b = unique("a"), unique("b")
    sub = await live.connect(alice)
    await subscribe(sub, a, SUB)
    await subscribe(sub, b, SUB)
    writer = await live.connect(bob)

    post = await ws_create(writer, f"#{a} #{b} #{a.upper()}")
    assert await sub.recv() == event("create", post, SUB)
    post = await ws_update(writer, post, f"#{b} and #{a} edited")
    assert await sub.recv() == event("update", post, SUB)
    await ws_delete(writer, post)
    assert await sub.recv() == event("delete", post, SUB)
    # A second copy of any of these would arrive before the barrier's event.
    await barrier(live, bob, sub, writer)


async def test_each_subscription_on_a_connection_gets_its_own_event(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    a, b = unique("a"), unique("b")
    sub = await live.connect(alice)
    await subscribe(sub, a, 102)
    await subscribe(sub, a, "second")
    await subscribe(sub, b, 104)
    writer = await live.connect(bob)

    post = await ws_create(writer, f"#{a}")
    assert by_request_id(await recv_all(sub, 2)) == [
        event("create", post, 102),
        event("create", post, "second"),
    ]
    await barrier(live, bob, sub)  # 104 follows only b

    # One post touching both tags: every subscription once, each with its own request_id.
    post = await ws_create(writer, f"#{a} #{b}")
    assert by_request_id(await recv_all(sub, 3)) == [
        event("create", post, 102),
        event("create", post, 104),
        event("create", post, "second"),
    ]
    # Moving from a to b: a delete for the a-only subscriptions, an update for 104.
    post = await ws_update(writer, post, f"#{b} only")
    assert by_request_id(await recv_all(sub, 3)) == [
        event("delete", post, 102),
        event("update", post, 104),
        event("delete", post, "second"),
    ]
    await barrier(live, bob, sub)


async def test_subscribing_a_tag_twice_under_one_id_is_one_subscription(live: Stack) -> None:
    alice = await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    # The three spellings all name the same tag.
    for spelling in (tag, f"#{tag}", tag.upper()):
        await subscribe(sub, spelling, SUB)
    post = await ws_create(await live.connect(alice), f"#{tag}")
    assert await sub.recv() == event("create", post, SUB)
    await barrier(live, alice, sub)
    # And one unsubscribe removes it.
    await unsubscribe(sub, tag, SUB)
    await ws_create(await live.connect(alice), f"#{tag}")
    await barrier(live, alice, sub)


# ---- multiplexed framing -----------------------------------------------------------------------


async def multiplexed(client: WsClient, action: str, tag: str, request_id: Any) -> Any:
    request = {"action": action, "hashtag": tag, "request_id": request_id}
    return await client.ask(wrapped(request))


async def test_multiplexed_subscription_gets_wrapped_events(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    reply = await multiplexed(sub, "subscribe_to_hashtag", tag, 7)
    assert reply == wrapped(subscribed(reply.get("payload"), 7))
    writer = await live.connect(bob)

    post = await ws_create(writer, f"#{tag}")
    assert await sub.recv() == wrapped(event("create", post, 7))
    post = await ws_update(writer, post, f"#{tag} edited", "patch")
    assert await sub.recv() == wrapped(event("update", post, 7))
    await ws_delete(writer, post)
    assert await sub.recv() == wrapped(event("delete", post, 7))
    await barrier(live, bob, sub)


async def test_bare_and_wrapped_with_one_request_id_are_two_subscriptions(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    await subscribe(sub, tag, SUB)
    reply = await multiplexed(sub, "subscribe_to_hashtag", tag, SUB)
    assert reply == wrapped(subscribed(reply.get("payload"), SUB))
    writer = await live.connect(bob)

    post = await ws_create(writer, f"#{tag}")
    frames = await recv_all(sub, 2)
    # No order is promised between the two subscriptions.
    assert sorted(frames, key=lambda frame: "stream" in frame) == [
        event("create", post, SUB),
        wrapped(event("create", post, SUB)),
    ]
    await barrier(live, bob, sub)

    # The wrapped unsubscribe names the wrapped subscription, which holds the tag: the bare
    # one keeps it.
    reply = await multiplexed(sub, "unsubscribe_from_hashtag", tag, SUB)
    assert reply == wrapped(ok("unsubscribe_from_hashtag", {}, SUB, 204))
    post = await ws_update(writer, post, f"#{tag} edited")
    assert await sub.recv() == event("update", post, SUB)
    await barrier(live, bob, sub)


# ---- unsubscribe -------------------------------------------------------------------------------


async def test_unsubscribe_with_the_same_id_leaves_its_other_tags(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    a, b = unique("a"), unique("b")
    sub = await live.connect(alice)
    await subscribe(sub, a, SUB)
    await subscribe(sub, b, SUB)
    await unsubscribe(sub, f"#{a.upper()}", SUB)
    writer = await live.connect(bob)

    await ws_create(writer, f"#{a}")
    post = await ws_create(writer, f"#{b}")
    assert await sub.recv() == event("create", post, SUB)
    await barrier(live, bob, sub)


async def test_unsubscribe_with_the_same_id_leaves_other_subscriptions(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    await subscribe(sub, tag, 102)
    await subscribe(sub, tag, 104)
    # Subscription 102 holds the tag, so only it loses it.
    await unsubscribe(sub, tag, 102)

    post = await ws_create(await live.connect(bob), f"#{tag}")
    assert await sub.recv() == event("create", post, 104)
    await barrier(live, bob, sub)


async def test_unsubscribe_with_another_id_removes_from_every_subscription(live: Stack) -> None:
    """The seed's example: subscribe with id 102, unsubscribe with id 103."""
    alice, bob = await live.user(), await live.user()
    a, b = unique("a"), unique("b")
    sub = await live.connect(alice)
    await subscribe(sub, a, 102)
    await subscribe(sub, b, 102)
    await subscribe(sub, a, 104)
    await unsubscribe(sub, a, 103)
    writer = await live.connect(bob)

    await ws_create(writer, f"#{a}")
    await barrier(live, bob, sub)
    # Only the tag went: 102 still follows b.
    post = await ws_create(writer, f"#{b}")
    assert await sub.recv() == event("create", post, 102)
    await barrier(live, bob, sub)


async def test_unsubscribe_with_an_id_not_holding_the_tag_removes_it_everywhere(
    live: Stack,
) -> None:
    """104 exists but does not hold a: the tag leaves every subscription, not just 104."""
    alice, bob = await live.user(), await live.user()
    a, b = unique("a"), unique("b")
    sub = await live.connect(alice)
    await subscribe(sub, a, 102)
    await subscribe(sub, b, 104)
    await unsubscribe(sub, a, 104)
    writer = await live.connect(bob)

    await ws_create(writer, f"#{a}")
    post = await ws_create(writer, f"#{a} #{b}")
    assert await sub.recv() == event("create", post, 104)
    await barrier(live, bob, sub)


async def test_unsubscribe_before_any_event_works(live: Stack) -> None:
    """DCRF's unsubscribe fails before the first event; livepost's does not."""
    alice, bob = await live.user(), await live.user()
    tag, never = unique("tag"), unique("never")
    sub = await live.connect(alice)
    await unsubscribe(sub, never, 1)  # not subscribed at all: still 204
    await subscribe(sub, tag, SUB)
    await unsubscribe(sub, tag, SUB)
    writer = await live.connect(bob)
    await ws_create(writer, f"#{tag}")
    await barrier(live, bob, sub)

    # Subscribing again works again.
    await subscribe(sub, tag, SUB)
    post = await ws_create(writer, f"#{tag}")
    assert await sub.recv() == event("create", post, SUB)


# ---- fan-out and write paths -------------------------------------------------------------------


async def test_every_subscribed_connection_gets_the_event(live: Stack) -> None:
    users = [await live.user() for _ in range(3)]
    tag = unique("tag")
    # Two connections share a request_id, one has its own.
    request_ids = [SUB, SUB, "other"]
    subs = [await live.connect(user) for user in users]
    for sub, request_id in zip(subs, request_ids, strict=True):
        await subscribe(sub, tag, request_id)
    unsubscribed = await live.connect(users[0])

    post = await ws_create(await live.connect(users[0]), f"#{tag}")
    for sub, request_id in zip(subs, request_ids, strict=True):
        assert await sub.recv() == event("create", post, request_id)
    await barrier(live, users[0], *subs, unsubscribed)


async def test_rest_writes_raise_the_same_events(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    await subscribe(sub, tag, SUB)

    response = await rest(live, bob, "POST", "/posts", {"body": f" posted #{tag} "})
    assert response.status_code == 201, response.text
    post = post_json(response.json())
    assert (post["author"], post["body"], post["version"]) == (bob.id, f"posted #{tag}", 1)
    assert await sub.recv() == event("create", post, SUB)
    # The REST body is the same post the socket serves.
    assert await ws_retrieve(sub, post["pk"]) == post

    for method, body in [("PUT", f"put #{tag}"), ("PATCH", f"patched #{tag}")]:
        response = await rest(live, bob, method, f"/posts/{post['pk']}", {"body": body})
        post = {**post, "body": body, "version": post["version"] + 1}
        assert (response.status_code, response.json()) == (200, post)
        assert await sub.recv() == event("update", post, SUB)

    response = await rest(live, bob, "DELETE", f"/posts/{post['pk']}")
    assert (response.status_code, response.content) == (204, b"")
    assert await sub.recv() == event("delete", post, SUB)
    await barrier(live, bob, sub)


# ---- CLI ---------------------------------------------------------------------------------------


async def cli(live: Stack, *args: str) -> str:
    """Run `livepost` against this stack's database and broker."""
    env = {
        **os.environ,
        "DATABASE_URL": live.settings.database_url,
        "JWT_SECRET": live.settings.jwt_secret or "",
        # With Redis the CLI publishes itself; without, the server's relay publishes its writes.
        "REDIS_URL": live.settings.redis_url or "",
        "CHANNEL_PREFIX": live.settings.channel_prefix,
    }
    result = await run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_cli_writes_raise_events(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    await subscribe(sub, tag, SUB)

    out = await cli(live, "post", "create", "--user", bob.username, "--body", f"from cli #{tag}")
    post = post_json(json.loads(out))
    assert (post["author"], post["body"], post["version"]) == (bob.id, f"from cli #{tag}", 1)
    assert await sub.recv() == event("create", post, SUB)

    pk = str(post["pk"])
    out = await cli(live, "post", "edit", "--user", bob.username, "--pk", pk, "--body", f"#{tag}!")
    post = {**post, "body": f"#{tag}!", "version": 2}
    assert json.loads(out) == post
    assert await sub.recv() == event("update", post, SUB)

    assert await cli(live, "post", "delete", "--user", bob.username, "--pk", pk) == ""
    assert await sub.recv() == event("delete", post, SUB)
    await barrier(live, bob, sub)


# ---- broker reference counting -----------------------------------------------------------------


def channel(live: Stack, tag: str) -> str:
    return channel_for(live.server.runtime.settings.channel_prefix, tag)


async def broker_subscriptions(live: Stack, tag: str) -> int:
    """How many broker subscriptions the server holds for tag's channel (0 or 1 per worker):
    the MemoryBroker's channel set, or Redis's own count."""
    name = channel(live, tag)
    if live.settings.redis_url is None:
        return int(name in live.server.runtime.broker.channels)
    redis = Redis.from_url(live.settings.redis_url)
    try:
        async with asyncio.timeout(5):
            [(_, count)] = await redis.pubsub_numsub(name)
    finally:
        await redis.aclose()
    return int(count)


async def wait_released(live: Stack, tag: str) -> None:
    """Poll the broker state (never events) until the channel is gone: nothing signals that
    the hub let go of it, and a closed connection is released in the background."""
    async with asyncio.timeout(5):
        while await broker_subscriptions(live, tag):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_broker_channel_lives_while_any_connection_follows_the_tag(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    first, second = await live.connect(alice), await live.connect(bob)
    assert await broker_subscriptions(live, tag) == 0
    await subscribe(first, tag, 1)
    await subscribe(first, tag, 2)
    await subscribe(second, tag, SUB)
    # Three local subscriptions, one broker subscription.
    assert await broker_subscriptions(live, tag) == 1

    # The first connection leaves ("neither" holds the tag, so it leaves both of its
    # subscriptions): the second still holds the channel and gets events.
    await unsubscribe(first, tag, "neither")
    post = await ws_create(first, f"#{tag}")
    assert await second.recv() == event("create", post, SUB)
    await barrier(live, alice, first, second)
    assert await broker_subscriptions(live, tag) == 1

    # The last one out drops it.
    await unsubscribe(second, tag, SUB)
    await wait_released(live, tag)
    await first.close()
    await second.close()
    assert tag not in live.server.runtime.hub.local_tags


async def test_closing_connections_releases_the_broker_channel(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    first, second = await live.connect(alice), await live.connect(bob)
    await subscribe(first, tag, 1)
    await subscribe(first, tag, 2)
    await subscribe(second, tag, SUB)

    # Closed without unsubscribing: the remaining connection still holds the channel.
    await first.close()
    post = await ws_create(second, f"#{tag}")
    assert await second.recv() == event("create", post, SUB)
    assert await broker_subscriptions(live, tag) == 1

    await second.close()
    await wait_released(live, tag)
    assert tag not in live.server.runtime.hub.local_tags


# ---- ordering ----------------------------------------------------------------------------------


async def send_updates(writer: WsClient, post: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    """Pipeline updates to versions 2..21, sent before reading anything; returns the posts."""
    posts = [{**post, "body": f"#{tag} v{n}", "version": n} for n in range(2, 22)]
    for changed in posts:
        request_id = f"u{changed['version']}"
        data = {"body": changed["body"]}
        await writer.send(
            {"action": "update", "pk": post["pk"], "data": data, "request_id": request_id}
        )
    return posts


def update_reply(post: dict[str, Any]) -> dict[str, Any]:
    return ok("update", post, f"u{post['version']}", 200)


async def test_burst_of_updates_arrives_in_version_order(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    writer = await live.connect(bob)
    post = await ws_create(writer, f"#{tag} v1")
    sub = await live.connect(alice)
    await subscribe(sub, tag, SUB)

    posts = await send_updates(writer, post, tag)
    assert await recv_all(writer, 20) == [update_reply(p) for p in posts]
    assert await recv_all(sub, 20) == [event("update", p, SUB) for p in posts]
    await barrier(live, bob, sub, writer)


async def test_burst_on_the_writers_own_subscription_puts_each_reply_first(live: Stack) -> None:
    bob = await live.user()
    tag = unique("tag")
    writer = await live.connect(bob)
    post = await ws_create(writer, f"#{tag} v1")
    await subscribe(writer, tag, SUB)

    posts = await send_updates(writer, post, tag)
    frames = await recv_all(writer, 40)
    replies = [frame for frame in frames if "response_status" in frame]
    events = [frame for frame in frames if "response_status" not in frame]
    assert replies == [update_reply(p) for p in posts]
    assert events == [event("update", p, SUB) for p in posts]
    # Replies and events may interleave in any way, as long as each reply leads its event.
    for p in posts:
        assert frames.index(update_reply(p)) < frames.index(event("update", p, SUB))
    await barrier(live, bob, writer)


async def test_concurrent_writes_never_deliver_an_older_version_after_a_newer(
    live: Stack,
) -> None:
    """Concurrent REST writers: versions are assigned in commit order, publishes may race; a
    subscription sees strictly growing versions ending with the last one (stale ones dropped)."""
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    sub = await live.connect(alice)
    post = await ws_create(await live.connect(bob), f"#{tag} v1")
    await subscribe(sub, tag, SUB)

    async with live.http() as http:
        responses = await asyncio.gather(
            *(
                http.put(f"/posts/{post['pk']}", json={"body": f"#{tag} w{n}"}, headers=bob.headers)
                for n in range(20)
            )
        )
    assert [response.status_code for response in responses] == [200] * 20
    by_version = {response.json()["version"]: response.json() for response in responses}
    assert sorted(by_version) == list(range(2, 22))

    seen: list[int] = []
    while not seen or seen[-1] != 21:
        frame = await sub.recv()
        version = frame["data"]["version"]
        assert frame == event("update", by_version[version], SUB)
        assert not seen or version > seen[-1], f"version {version} after {seen}"
        seen.append(version)
    await barrier(live, bob, sub)
