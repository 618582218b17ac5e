from tests.support import Stack, post_json, subscribe, unique


async def test_create_reaches_subscriber(live: Stack) -> None:
    alice, bob = await live.user(), await live.user()
    tag = unique("tag")
    a = await live.connect(alice)
    await subscribe(a, tag, 102)
    b = await live.connect(bob)
    reply = await b.ask({"action": "create", "data": {"body": f"hello #{tag.upper()}"}, "request_id": 1})
    post = post_json(reply["data"])
    assert reply == {"errors": [], "data": post, "action": "create", "response_status": 201, "request_id": 1}
    assert await a.recv() == {"action": "create", "pk": post["pk"], "data": post, "request_id": 102}
