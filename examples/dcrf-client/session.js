// livepost driven by dcrf-client, the JavaScript client of DjangoChannelsRestFramework
// frontends, used as published: connect with a token, follow a hashtag, create, update and
// delete a post, and print every reply and event as one JSON line.
//
//   npm ci
//   node session.js ws://127.0.0.1:8000/ws "$TOKEN" python
//
// dcrf-client wraps every request as {"stream": "posts", "payload": {...}} and livepost answers
// in kind (docs/protocol.md, "Multiplexed frames"). Its `subscribe()` is DCRF's per-instance
// `subscribe_instance`; livepost's subscriptions are per hashtag, so this script sends
// `subscribe_to_hashtag` through the client's generic `request()` and picks the events off
// the client's dispatcher by the subscription's request_id, as a DCRF frontend does for a
// custom action.
//
// On the wire a write's reply comes before its event; here an event's line may still come
// first: both frames often arrive in one read, and the client's dispatcher handles both
// before the awaiting code below resumes.
"use strict";

const dcrf = require("dcrf-client").default;
const WebSocket = require("ws"); // Node 20 has no global WebSocket

const STREAM = "posts";
const TIMEOUT_MS = 20000;

function print(kind, value) {
  console.log(JSON.stringify({ [kind]: value }));
}

function fail(message) {
  console.error(`session.js: ${message}`);
  process.exit(1);
}

async function main() {
  const [url, token, hashtag] = process.argv.slice(2);
  if (!url || !token || !hashtag) fail("usage: node session.js WS_URL TOKEN HASHTAG");
  setTimeout(() => fail(`no end after ${TIMEOUT_MS} ms`), TIMEOUT_MS).unref();

  const client = dcrf.connect(`${url}?token=${encodeURIComponent(token)}`, {
    websocket: { WebSocket, maxRetries: 0 }, // one attempt: a refused token should fail here
  });
  const subscription = `follow-${hashtag}`; // the request_id its events carry

  // Events have no response_status (replies do); each one resolves the wait for its action.
  const waiting = new Map();
  client.dispatcher.listen({ stream: STREAM, payload: { request_id: subscription } }, (frame) => {
    const event = frame.payload;
    if (event.response_status !== undefined) return;
    print("event", event);
    const resolve = waiting.get(event.action);
    if (resolve) {
      waiting.delete(event.action);
      resolve(event);
    }
  });
  const next = (action) => new Promise((resolve) => waiting.set(action, resolve));

  const subscribed = await client.request(
    STREAM,
    { action: "subscribe_to_hashtag", hashtag },
    subscription,
  );
  print("subscribe_to_hashtag", subscribed);

  let event = next("create");
  const post = await client.create(STREAM, { body: `Hello from dcrf-client #${hashtag}` });
  print("create", post);
  await event;

  event = next("update");
  print("update", await client.update(STREAM, post.pk, { body: `Edited, still #${hashtag}` }));
  await event;

  print("list", await client.list(STREAM, { body_contains: `#${hashtag}`, limit: 5 }));

  event = next("delete");
  print("delete", await client.delete(STREAM, post.pk));
  await event;

  print(
    "unsubscribe_from_hashtag",
    await client.request(STREAM, { action: "unsubscribe_from_hashtag", hashtag }, subscription),
  );
  client.close();
}

main().catch((error) => {
  // dcrf-client rejects with the reply itself when its status is not 2xx.
  fail(error instanceof Error ? error.stack : `refused: ${JSON.stringify(error)}`);
});
