// The page: who is signed in, which view is open (newest posts or one hashtag), the posts
// it holds and the live connection that keeps them current.

import { AccountError, forgetSession, register, savedSession, signIn } from "./account.js";
import { Connection, NotConnected, Subscription } from "./connection.js";
import { describeReply } from "./errors.js";
import { hashtagHref, hashtagsOf, normalizeHashtag } from "./hashtags.js";
import { PostList } from "./postlist.js";
import { PostStore } from "./store.js";

const PAGE_SIZE = 50;
const $ = (id) => document.getElementById(id);

// One subscription holds every followed hashtag; a second one follows the hashtag whose
// view is open when it is not followed, so that view is live too.
const follows = new Subscription("follow");
const viewing = new Subscription("view");
const connection = new Connection(new Map([[follows.requestId, follows], [viewing.requestId, viewing]]));
const store = new PostStore();
const list = new PostList($("posts"), {
  isMine: (post) => connection.userId !== null && post.author === connection.userId,
  edit: editPost,
  remove: deletePost,
});

let session = null;
let currentTag = null; // null: the newest posts
let live = new Set(); // pks that changed live since the last render
let older = { oldest: null, more: true }; // the "load older" cursor of the open view

// --- what the person sees ---------------------------------------------------------------

function notify(text) {
  $("notice-text").textContent = text;
  $("notice").hidden = false;
}

function replyProblem(reply) {
  return describeReply(reply, { signedIn: connection.userId !== null });
}

function failure(error) {
  if (error instanceof NotConnected) return error.message;
  throw error;
}

function inView(post) {
  return currentTag === null || hashtagsOf(post.body).has(currentTag);
}

function render() {
  const posts = store.newest(inView);
  list.show(posts, live);
  live = new Set();
  $("empty").hidden = posts.length > 0;
  $("older").hidden = !older.more;
}

function renderStatus({ state, reason, retryInMs }) {
  const status = $("status");
  status.dataset.state = state;
  let text = "Connecting…";
  if (state === "online") {
    text = connection.userId === null ? "Live (read only)" : "Live";
  } else if (state === "offline") {
    const retry = retryInMs === null ? "" : ` Reconnecting in ${Math.ceil(retryInMs / 1000)} s…`;
    text = `Offline. ${reason}${retry}`.trim();
  }
  status.querySelector(".text").textContent = text;
  $("compose-send").disabled = state !== "online";
}

function renderAccount() {
  const signedIn = session !== null;
  $("account").hidden = signedIn;
  $("compose").hidden = !signedIn;
  $("me").textContent = signedIn ? `Signed in as ${session.username}` : "";
  $("sign-out").hidden = !signedIn;
  $("follow-form").hidden = !signedIn;
  $("follow-hint").hidden = signedIn;
  renderFollows();
}

function renderFollows() {
  const items = [...follows.tags].sort().map((tag) => {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = hashtagHref(tag);
    link.textContent = `#${tag}`;
    const drop = document.createElement("button");
    drop.type = "button";
    drop.className = "unfollow";
    drop.textContent = "×";
    drop.setAttribute("aria-label", `Unfollow #${tag}`);
    drop.addEventListener("click", () => unfollow(tag));
    item.append(link, drop);
    return item;
  });
  $("follow-list").replaceChildren(...items);
  const toggle = $("follow-toggle");
  toggle.hidden = currentTag === null || session === null;
  if (currentTag !== null) {
    const following = follows.tags.has(currentTag);
    toggle.textContent = following ? `Unfollow #${currentTag}` : `Follow #${currentTag}`;
    toggle.setAttribute("aria-pressed", String(following));
  }
}

// --- views and listings ----------------------------------------------------------------

async function listPage(before) {
  const params = { limit: PAGE_SIZE };
  if (currentTag !== null) params.body_contains = `#${currentTag}`;
  if (before !== null) params.before = before;
  const tag = currentTag;
  const reply = await connection.request("list", params);
  if (reply.response_status !== 200) {
    notify(replyProblem(reply));
    return;
  }
  for (const post of reply.data) store.accept(post);
  if (tag !== currentTag) return; // the view changed meanwhile: its own listing follows
  if (before === null && older.oldest !== null) return render(); // a refresh: keep the cursor
  const last = reply.data[reply.data.length - 1];
  older = { oldest: last ? last.pk : older.oldest, more: reply.data.length === PAGE_SIZE };
  render();
}

/** The open view from scratch: what is held now may be stale (or the log could not resume). */
async function reloadView() {
  store.clear();
  older = { oldest: null, more: true };
  render();
  await listPage(null).catch(failure);
}

async function openView() {
  const match = /^#\/tag\/([a-z0-9]+)$/.exec(location.hash);
  currentTag = match ? match[1] : null;
  document.body.dataset.view = currentTag === null ? "feed" : "tag";
  $("view-title").textContent = currentTag === null ? "Newest posts" : `#${currentTag}`;
  document.title = currentTag === null ? "livepost" : `#${currentTag} · livepost`;
  $("back").hidden = currentTag === null;
  older = { oldest: null, more: true };
  list.reset();
  renderFollows();
  render();
  if (!connection.ready) return; // the connection lists once it is back
  await Promise.all([listPage(null), syncViewSubscription()]).catch((e) => notify(failure(e)));
}

/** Keep the open hashtag view live: subscribe it under "view" unless it is followed. */
async function syncViewSubscription() {
  const wanted =
    currentTag !== null && connection.userId !== null && !follows.tags.has(currentTag)
      ? currentTag
      : null;
  for (const tag of [...viewing.tags]) {
    if (tag !== wanted) await connection.unsubscribe(viewing, tag);
  }
  if (wanted !== null && !viewing.tags.has(wanted)) {
    const reply = await connection.subscribe(viewing, wanted);
    if (reply.response_status !== 201) notify(replyProblem(reply));
  }
}

// --- live events -------------------------------------------------------------------------

connection.addEventListener("event", ({ detail: { frame } }) => {
  if (frame.action === "delete") {
    settleRemoval(frame.pk);
  } else if (frame.data && store.accept(frame.data)) {
    live.add(frame.pk);
    render();
  }
});

/**
 * A `delete` event says the post left the subscription: deleted, or edited out of its
 * hashtags. Which one decides whether the newest-posts view keeps it, so ask.
 */
async function settleRemoval(pk) {
  if (!store.has(pk)) return;
  try {
    const reply = await connection.request("retrieve", { pk });
    if (reply.response_status === 200) {
      if (store.accept(reply.data)) live.add(pk);
    } else if (reply.response_status === 404) {
      store.forget(pk);
    }
  } catch (error) {
    failure(error);
    store.drop(pk); // the listing after the reconnect brings it back if it still exists
  }
  render();
}

// Closes that say something about this page (it flooded, sent too much, read too slowly)
// stay on screen; a lost network or a restarting server shows in the status line only.
const TELLING_CLOSES = new Set([1008, 1009, 1011, 1013]);

connection.addEventListener("state", ({ detail }) => {
  renderStatus(detail);
  if (TELLING_CLOSES.has(detail.code)) notify(`${detail.reason} Reconnecting…`);
});

connection.addEventListener("ready", async ({ detail: { first, recovered } }) => {
  renderStatus({ state: "online" });
  if (first || !recovered) {
    await reloadView();
  } else {
    // Followed hashtags resumed from their watermark; posts outside them come from a listing.
    await listPage(null).catch(failure);
  }
  await syncViewSubscription().catch((error) => notify(failure(error)));
});

connection.addEventListener("failed", ({ detail: { reply } }) => notify(replyProblem(reply)));

connection.addEventListener("signed-out", () => {
  endSession();
  notify("Your session has expired: please sign in again.");
});

// --- writes --------------------------------------------------------------------------------

async function editPost(post, body) {
  try {
    const reply = await connection.request("patch", { pk: post.pk, data: { body } });
    if (reply.response_status !== 200) return replyProblem(reply);
    if (store.accept(reply.data)) live.add(post.pk);
    render();
    return null;
  } catch (error) {
    return failure(error);
  }
}

async function deletePost(post) {
  try {
    const reply = await connection.request("delete", { pk: post.pk });
    if (reply.response_status === 204 || reply.response_status === 404) {
      store.forget(post.pk); // a 404: it was deleted already
    }
    if (reply.response_status !== 204) notify(replyProblem(reply));
    render();
  } catch (error) {
    notify(failure(error));
  }
}

$("compose-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const field = $("compose-body");
  $("compose-error").textContent = "";
  try {
    const reply = await connection.request("create", { data: { body: field.value } });
    if (reply.response_status !== 201) {
      $("compose-error").textContent = replyProblem(reply);
      return;
    }
    store.accept(reply.data);
    live.add(reply.data.pk);
    field.value = "";
    updateCounter();
    render();
  } catch (error) {
    $("compose-error").textContent = failure(error);
  }
});

function updateCounter() {
  const length = [...$("compose-body").value.trim()].length;
  $("compose-count").textContent = `${length}/256`;
  $("compose-count").classList.toggle("over", length > 256);
}
$("compose-body").addEventListener("input", updateCounter);

// --- following hashtags --------------------------------------------------------------------

function followsKey() {
  return `livepost.follows.${session.username}`;
}

function saveFollows() {
  if (session !== null) sessionStorage.setItem(followsKey(), JSON.stringify([...follows.tags]));
}

async function follow(text) {
  const tag = normalizeHashtag(text);
  if (tag !== null && follows.tags.has(tag)) return null;
  // A text that is not a hashtag still goes to the server: its answer says what is wrong.
  const reply = await connection.subscribe(follows, tag ?? text);
  if (reply.response_status !== 201) return replyProblem(reply);
  saveFollows();
  renderFollows();
  await syncViewSubscription();
  return null;
}

async function unfollow(tag) {
  try {
    const reply = await connection.unsubscribe(follows, tag);
    if (reply.response_status !== 204) return notify(replyProblem(reply));
    saveFollows();
    renderFollows();
    await syncViewSubscription();
  } catch (error) {
    notify(failure(error));
  }
}

$("follow-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const field = $("follow-tag");
  $("follow-error").textContent = "";
  try {
    const problem = await follow(field.value);
    if (problem) $("follow-error").textContent = problem;
    else field.value = "";
  } catch (error) {
    $("follow-error").textContent = failure(error);
  }
});

$("follow-toggle").addEventListener("click", () => {
  if (currentTag === null) return;
  if (follows.tags.has(currentTag)) return unfollow(currentTag);
  follow(currentTag)
    .then((problem) => problem && notify(problem))
    .catch((error) => notify(failure(error)));
});

// --- signing in and out -------------------------------------------------------------------

function startSession(saved) {
  session = saved;
  connection.token = saved.token;
  let tags = [];
  try {
    tags = JSON.parse(sessionStorage.getItem(followsKey()) ?? "[]");
  } catch {
    // a damaged entry: start without follows
  }
  follows.tags = new Set(tags.filter((tag) => normalizeHashtag(tag) === tag));
  follows.safe = null;
  renderAccount();
}

function endSession() {
  session = null;
  forgetSession();
  connection.token = null;
  connection.userId = null;
  follows.tags = new Set();
  viewing.tags = new Set();
  list.reset();
  renderAccount();
  render();
}

async function submitAccount(action) {
  const form = $("account-form");
  if (!form.reportValidity()) return;
  $("account-error").textContent = "";
  try {
    startSession(await action($("username").value.trim(), $("password").value));
    $("password").value = "";
    list.reset();
    connection.restart(); // sign the socket in and subscribe
  } catch (error) {
    if (!(error instanceof AccountError)) throw error;
    $("account-error").textContent = error.message;
  }
}

$("account-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  submitAccount(signIn);
});
$("register").addEventListener("click", () => submitAccount(register));
$("sign-out").addEventListener("click", () => {
  endSession();
  connection.restart();
});

// --- the rest of the page -----------------------------------------------------------------

$("older").addEventListener("click", () => {
  listPage(older.oldest).catch((error) => notify(failure(error)));
});
$("notice-dismiss").addEventListener("click", () => {
  $("notice").hidden = true;
});
window.addEventListener("hashchange", () => openView());
// The network is back: do not sit out the rest of a long backoff.
window.addEventListener("online", () => connection.ready || connection.restart());
window.addEventListener("pagehide", () => connection.stop());
window.addEventListener("pageshow", (shown) => shown.persisted && connection.start());

const saved = savedSession();
if (saved) startSession(saved);
renderAccount();
openView();
connection.start();
