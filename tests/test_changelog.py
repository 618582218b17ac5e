"""The change log (outbox): offsets on events, resume with `since`, changes made by plain SQL,
retention. PROTOCOL.md "Resume after reconnect"; every test runs on each stack.

"No event" is proven with `barrier`, never by waiting.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app.config import Settings
from app.migrations import upgrade_to_head
from app.runtime import Runtime
from tests.cluster_support import admin_sql, require_services
from tests.conftest import GENEROUS_LIMITS, SECRET
from tests.support import (
    Endpoint,
    Server,
    Stack,
    barrier,
    create,
    edit,
    event,
    fail,
    next_event,
    ok,
    query,
    remove,
    resume,
    sqlite_server,
    subscribe,
    unique,
    wrapped,
)

# ---- helpers -------------------------------------------------------------------------------


async def database_client(stack: Stack, sql: str) -> str:
    """Run sql through the database's own command-line client (psql or sqlite3), as an
    operator would: nothing of livepost's code is involved in the write."""
    url = make_url(stack.settings.database_url)
    if url.get_backend_name() == "sqlite":
        command = [shutil.which("sqlite3") or "sqlite3", "-bail", str(url.database), sql]
    else:
        plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
        command = [
            shutil.which("psql") or "psql",
            plain,
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            "-c",
            sql,
        ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


async def log_rows(deployment: Stack | Runtime, pk: int) -> list[Any]:
    """The post's change records, oldest first, in a stack's or a server's database."""
    return await query(
        deployment.settings.database_url,
        "SELECT id, action, version, published FROM post_changes WHERE post_id = :pk ORDER BY id",
        pk=pk,
    )


# ---- offsets -------------------------------------------------------------------------------


async def test_the_watermark_passes_every_write_its_fast_path_published(live: Stack) -> None:
    """Written and published (a post without hashtags has nothing to publish), so the next
    round of the watermark passes it: no write waits for the relay's grace."""
    user = await live.user()
    client = await live.connect(user)
    tagless = await create(client, "a lone # is no hashtag")  # so the trigger cannot tell
    tagged = await create(client, f"#{unique('mark')} tagged")
    written = [row.id for post in (tagless, tagged) for row in await log_rows(live, post["pk"])]
    assert await live.server.runtime.watermark.publish_once() >= max(written)


async def test_events_carry_growing_offsets_past_the_subscribe_reply(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    tag = unique("off")
    start = await subscribe(client, tag, "s")
    post = await create(client, f"#{tag} one")
    created = await next_event(client)
    post = await edit(client, post["pk"], f"#{tag} two")
    updated = await next_event(client)
    await remove(client, post["pk"])
    deleted = await next_event(client)
    assert created == event("create", post["pk"], {**post, "body": f"#{tag} one", "version": 1},
                            "s", created["offset"])  # fmt: skip
    assert updated == event("update", post["pk"], post, "s", updated["offset"])
    assert deleted == event("delete", post["pk"], {"pk": post["pk"]}, "s", deleted["offset"])
    assert start < created["offset"] < updated["offset"] < deleted["offset"]
    # The reply to a later subscribe reports the log's end, which is at least that far.
    assert await subscribe(client, unique("other"), "s2") >= deleted["offset"]


async def test_every_committed_write_has_its_change_record(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    post = await create(client, f"#{unique('rec')} a")
    await edit(client, post["pk"], "no tag left")
    await remove(client, post["pk"])
    rows = await log_rows(live, post["pk"])
    assert [(row.action, row.version) for row in rows] == [
        ("create", 1),
        ("update", 2),
        ("delete", 3),
    ]
    assert [row.id for row in rows] == sorted(row.id for row in rows)
    # The fast path publishes; the relay marks those published in batches.
    async with asyncio.timeout(10):
        while not all(row.published for row in await log_rows(live, post["pk"])):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_write_that_changes_nothing_logs_nothing(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    post = await create(client, f"#{unique('same')} a")
    await edit(client, post["pk"], f"  {post['body']}  ")  # only white space: no change
    assert [row.action for row in await log_rows(live, post["pk"])] == ["create"]


# ---- resume --------------------------------------------------------------------------------


async def test_resume_delivers_missed_changes_in_order_then_live(live: Stack) -> None:
    user = await live.user()
    tag = unique("resume")
    first = await live.connect(user)
    await subscribe(first, tag, "old")
    post = await create(first, f"#{tag} seen")
    seen = await next_event(first)
    await first.close()

    # While nobody listens: an edit, a second post, a delete, and a post of another tag.
    writer = await live.connect(user)
    edited = await edit(writer, post["pk"], f"#{tag} edited")
    second = await create(writer, f"#{tag} second")
    await create(writer, f"#{unique('elsewhere')} not ours")
    await remove(writer, post["pk"])

    again = await live.connect(user)
    data = await resume(again, tag, seen["offset"], "new")
    assert data["recovered"] is True
    missed = [await next_event(again) for _ in range(3)]
    assert [(e["action"], e["pk"]) for e in missed] == [
        ("update", post["pk"]),
        ("create", second["pk"]),
        ("delete", post["pk"]),
    ]
    assert missed[0] == event("update", post["pk"], edited, "new", missed[0]["offset"])
    assert missed[1] == event("create", second["pk"], second, "new", missed[1]["offset"])
    offsets = [e["offset"] for e in missed]
    assert seen["offset"] < offsets[0] < offsets[1] < offsets[2] <= data["offset"]
    # Then live, once.
    third = await create(writer, f"#{tag} live")
    live_event = await next_event(again)
    assert live_event == event("create", third["pk"], third, "new", live_event["offset"])
    assert live_event["offset"] > data["offset"]
    await barrier(live, user, again)


async def test_resume_from_the_log_end_replays_nothing(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    tag = unique("end")
    await create(client, f"#{tag} before")
    current = await subscribe(client, unique("probe"), "probe")
    data = await resume(client, tag, current, "r")
    assert data == {"offset": data["offset"], "safe": data["safe"], "recovered": True}
    assert data["offset"] >= current
    await barrier(live, user, client)


async def test_resume_ahead_of_the_log_is_not_recovered_but_subscribes(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    tag = unique("ahead")
    current = await subscribe(client, unique("probe"), "probe")
    data = await resume(client, tag, current + 1_000_000, "r")
    assert data["recovered"] is False
    assert (await resume(client, tag, 2**70, "r"))["recovered"] is False
    post = await create(client, f"#{tag} live")
    received = await next_event(client)
    assert received == event("create", post["pk"], post, "r", received["offset"])
    assert received["offset"] > data["offset"]


async def test_resume_of_a_multiplexed_subscription_is_wrapped(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    tag = unique("mux")
    before = await subscribe(client, unique("probe"), "probe")
    post = await create(client, f"#{tag} missed")
    reply = await client.ask(
        wrapped({"action": "subscribe_to_hashtag", "hashtag": f"#{tag}", "since": before,
                 "request_id": 7})
    )  # fmt: skip
    data = reply["payload"]["data"]
    assert reply == wrapped(ok("subscribe_to_hashtag", data, 7, 201))
    assert data["recovered"] is True
    replayed = await client.recv()
    assert replayed == wrapped(event("create", post["pk"], post, 7, replayed["payload"]["offset"]))


async def test_bad_since_is_a_400_and_subscribes_nothing(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    tag = unique("bad")
    cases = [
        ("x", "A valid integer is required."),
        (True, "A valid integer is required."),
        ([1], "A valid integer is required."),
        (-1, "Ensure this value is greater than or equal to 0."),
    ]
    for since, message in cases:
        reply = await client.ask(
            {"action": "subscribe_to_hashtag", "hashtag": tag, "since": since, "request_id": 1}
        )
        assert reply == fail("subscribe_to_hashtag", 400, [{"since": [message]}], 1)
    await create(client, f"#{tag} unseen")
    await barrier(live, user, client)


# ---- changes made outside the service --------------------------------------------------------


async def test_plain_sql_update_and_delete_reach_subscribers(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    tag = unique("sql")
    await subscribe(client, tag, "s")
    post = await create(client, f"#{tag} by the service")
    await next_event(client)

    await database_client(live, f"UPDATE posts SET body = '#{tag} by psql' WHERE id = {post['pk']}")
    updated = await next_event(client)
    assert updated == event(
        "update", post["pk"], {**post, "body": f"#{tag} by psql", "version": 2}, "s",
        updated["offset"],
    )  # fmt: skip
    retrieved = await client.ask({"action": "retrieve", "pk": post["pk"], "request_id": "g"})
    assert retrieved["data"]["version"] == 2  # the trigger gave the row its new version

    await database_client(live, f"DELETE FROM posts WHERE id = {post['pk']}")
    deleted = await next_event(client)
    assert deleted == event("delete", post["pk"], {"pk": post["pk"]}, "s", deleted["offset"])
    assert updated["offset"] < deleted["offset"]
    await barrier(live, user, client)


async def test_plain_sql_bulk_update_yields_one_event_per_row(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    tag = unique("bulk")
    await subscribe(client, tag, "s")
    writer = await live.connect(user)
    posts = [await create(writer, f"#{tag} n{i}") for i in range(3)]
    for _ in posts:
        await next_event(client)
    await database_client(
        live, f"UPDATE posts SET body = body || ' edited' WHERE body LIKE '#{tag} %'"
    )
    events = sorted([await next_event(client) for _ in posts], key=lambda e: e["pk"])
    assert [(e["action"], e["pk"], e["data"]["body"]) for e in events] == [
        ("update", p["pk"], f"{p['body']} edited") for p in posts
    ]
    await barrier(live, user, client)


async def test_rolled_back_sql_logs_nothing_and_sends_nothing(live: Stack) -> None:
    user = await live.user()
    client = await live.connect(user)
    tag = unique("rollback")
    await subscribe(client, tag, "s")
    post = await create(client, f"#{tag} kept")
    await next_event(client)
    await database_client(
        live,
        f"BEGIN; UPDATE posts SET body = '#{tag} undone' WHERE id = {post['pk']}; ROLLBACK;",
    )
    assert [row.action for row in await log_rows(live, post["pk"])] == ["create"]
    await barrier(live, user, client)


# ---- retention -----------------------------------------------------------------------------


async def test_pruned_per_hashtag_backlog_is_not_recovered(tmp_path: Path) -> None:
    async with sqlite_server(tmp_path, changelog_max_per_hashtag=2) as server:
        endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
        user = await endpoint.user()
        client = await endpoint.connect(user)
        tag = unique("keep")
        start = await subscribe(client, unique("probe"), "probe")
        posts = [await create(client, f"#{tag} {i}") for i in range(4)]
        await server.runtime.relay.prune()
        # Only the newest two changes of the tag are kept: from before them, reload.
        assert (await resume(client, tag, start, "a"))["recovered"] is False
        third = (await log_rows(server.runtime, posts[1]["pk"]))[0].id
        data = await resume(client, tag, third, "b")
        assert data["recovered"] is True
        replayed = [await next_event(client) for _ in range(2)]
        assert [e["pk"] for e in replayed] == [posts[2]["pk"], posts[3]["pk"]]
        await endpoint.close_clients()


async def test_pruned_by_age_backlog_is_not_recovered(tmp_path: Path) -> None:
    async with sqlite_server(tmp_path, changelog_retention_seconds=0.0) as server:
        endpoint = Endpoint(f"http://127.0.0.1:{server.port}")
        user = await endpoint.user()
        client = await endpoint.connect(user)
        tag = unique("age")
        start = await subscribe(client, unique("probe"), "probe")
        await create(client, f"#{tag} old")
        await server.runtime.relay.prune()
        data = await resume(client, tag, start, "a")
        assert data["recovered"] is False
        # The log's end survives pruning: resuming from there still works.
        assert (await resume(client, tag, data["offset"], "b"))["recovered"] is True
        await endpoint.close_clients()


async def test_resuming_again_and_again_while_writes_go_on_loses_nothing(live: Stack) -> None:
    """A client that keeps dropping its connection mid-stream and resuming from the last offset
    it saw gets every change of the hashtag exactly once, in order, while another client
    writes the whole time (the live/backlog merge under real concurrency)."""
    user = await live.user()
    tag = unique("storm")
    writer = await live.connect(user)
    start = await subscribe(await live.connect(user), unique("probe"), "p")

    async def write_all() -> None:
        for i in range(150):
            await create(writer, f"#{tag} {i}")

    writing = asyncio.create_task(write_all())
    received: list[int] = []
    since, resumes = start, 0
    while not writing.done() or resumes == 0:
        client = await live.connect(user)
        assert (await resume(client, tag, since, f"r{resumes}"))["recovered"] is True
        resumes += 1
        for _ in range(10):  # a few events, then the connection drops mid-stream
            try:
                frame = await client.recv(timeout=0.5)
            except TimeoutError:
                break
            assert frame["request_id"] == f"r{resumes - 1}"
            received.append(frame["offset"])
            since = frame["offset"]
        await client.close()
    await writing
    last = await live.connect(user)
    assert (await resume(last, tag, since, "last"))["recovered"] is True
    expected = await tag_offsets(live, tag)
    while len(received) < len(expected):
        received.append((await next_event(last))["offset"])
    assert received == expected and len(expected) == 150, (resumes, received[:5])
    assert resumes > 3  # it really dropped and resumed mid-stream, several times
    await barrier(live, user, last)


async def tag_offsets(stack: Stack, tag: str) -> list[int]:
    """Offsets of the changes filed under tag, in order."""
    sql = "SELECT change_id FROM change_tags WHERE tag = :tag ORDER BY change_id"
    return [row.change_id for row in await query(stack.settings.database_url, sql, tag=tag)]


async def test_plain_sql_on_postgresql_wakes_the_relay_at_once() -> None:
    """NOTIFY from the trigger, not the relay's round: with rounds a minute apart, a psql
    UPDATE still reaches the subscriber within seconds."""
    pg_url, _redis = require_services()
    name = unique("lp_notify_")
    await admin_sql(pg_url, f'CREATE DATABASE "{name}"')
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        settings = Settings(
            database_url=url, jwt_secret=SECRET, relay_interval_seconds=60.0, **GENEROUS_LIMITS
        )
        server = Server(settings)
        await server.start()
        try:
            stack = Stack("postgres+memory", server.app.state.runtime.settings, server)
            user = await stack.user()
            client = await stack.connect(user)
            tag = unique("notify")
            await subscribe(client, tag, "s")
            post = await create(client, f"#{tag} before")
            await next_event(client)
            # Let the relay's first round (at start) pass, so only NOTIFY can wake it.
            await asyncio.sleep(0.5)
            await database_client(
                stack, f"UPDATE posts SET body = '#{tag} psql' WHERE id = {post['pk']}"
            )
            updated = await client.recv(timeout=5)
            assert (updated["action"], updated["data"]["body"]) == ("update", f"#{tag} psql")
            await stack.close_clients()
        finally:
            await server.stop()
    finally:
        await admin_sql(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
