"""Property: no sequence of actions lets one user change or delete another user's post."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Stack, User, WsClient

# One step: who acts, how (WebSocket or REST), what, on which post (by index), with what body.
steps = st.lists(
    st.tuples(
        st.sampled_from(["alice", "mallory"]),
        st.sampled_from(["ws", "rest"]),
        st.sampled_from(["create", "update", "patch", "delete"]),
        st.integers(min_value=0, max_value=7),
        st.one_of(st.text(min_size=1, max_size=20), st.just("#shared tag")),
    ),
    min_size=1,
    max_size=12,
)


@dataclass
class Actor:
    user: User
    ws: WsClient


async def act(stack: Stack, actor: Actor, via: str, action: str, pk: int, body: str) -> Any:
    """Perform one write; returns (status, post or None)."""
    if via == "ws":
        request: dict[str, Any] = {"action": action, "request_id": 1}
        if action != "create":
            request["pk"] = pk
        if action != "delete":
            request["data"] = {"body": body}
        reply = await actor.ws.ask(request)
        return reply["response_status"], reply["data"]
    async with stack.http() as http:
        headers = actor.user.headers
        if action == "create":
            response = await http.post("/posts", json={"body": body}, headers=headers)
        elif action == "update":
            response = await http.put(f"/posts/{pk}", json={"body": body}, headers=headers)
        elif action == "patch":
            response = await http.patch(f"/posts/{pk}", json={"body": body}, headers=headers)
        else:
            response = await http.delete(f"/posts/{pk}", headers=headers)
    data = response.json() if response.content else None
    return response.status_code, data


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sequence=steps)
async def test_nobody_changes_another_users_post(stack: Stack, sequence: list[Any]) -> None:
    actors = {}
    for name in ("alice", "mallory"):
        user = await stack.user()
        actors[name] = Actor(user, await stack.connect(user))
    owner: dict[int, str] = {}  # pk -> who created it
    truth: dict[int, dict[str, Any] | None] = {}  # pk -> the post as its owner left it
    for name in ("alice", "mallory"):
        status, post = await act(stack, actors[name], "ws", "create", 0, f"first of {name}")
        assert status == 201
        owner[post["pk"]], truth[post["pk"]] = name, post

    pks = sorted(owner)
    for who, via, action, index, body in sequence:
        target = pks[index % len(pks)]
        status, post = await act(stack, actors[who], via, action, target, body)
        if action == "create":
            if status == 201:
                owner[post["pk"]], truth[post["pk"]] = who, post
                pks.append(post["pk"])
            continue
        if owner[target] != who:
            # Someone else's post: always "Not found", whatever the body or channel.
            assert status == 404, (who, via, action, status, post)
            continue
        if status == 204:
            truth[target] = None
        elif status == 200:
            truth[target] = post

    # Every post is exactly as its owner left it (or gone because its owner deleted it).
    async with stack.http() as http:
        for pk, expected in truth.items():
            response = await http.get(f"/posts/{pk}")
            if expected is None:
                assert response.status_code == 404
            else:
                assert response.json() == expected
    await stack.close_clients()
