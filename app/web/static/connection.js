// The live connection to /ws: requests and their replies, subscriptions that resume where
// they stopped, and reconnection with exponential backoff and jitter.
//
// No token ever goes into a URL: the socket opens anonymous and signs in with the in-band
// `authenticate` action.

import { describeClose } from "./errors.js";

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
const EVENT_ACTIONS = new Set(["create", "update", "delete"]);

/**
 * Where a subscription may resume from, read from an event frame or a subscribe reply's
 * data: the `safe` watermark (every change at or below it was delivered), or, from a server
 * that does not send it yet, the frame's `offset`.
 */
export function resumePoint(holder) {
  return holder.safe ?? holder.offset;
}

/** The hashtags held under one request_id, and the point they resume from. */
export class Subscription {
  constructor(requestId) {
    this.requestId = requestId;
    this.tags = new Set();
    this.safe = null;
  }

  see(holder) {
    const point = holder ? resumePoint(holder) : undefined;
    if (Number.isInteger(point) && (this.safe === null || point > this.safe)) this.safe = point;
  }
}

export class NotConnected extends Error {
  constructor() {
    super("Not connected: wait for the live indicator, then try again.");
  }
}

/**
 * Emits "state" ({state: "connecting" | "online" | "offline", reason, retryInMs}),
 * "event" ({frame, subscription}) and "ready" ({first, recovered}) once a (re)connected
 * socket is signed in and every subscription is back.
 */
export class Connection extends EventTarget {
  constructor(subscriptions) {
    super();
    this.subscriptions = subscriptions; // request_id -> Subscription
    this.token = null;
    this.userId = null;
    this.socket = null;
    this.ready = false;
    this._pending = new Map(); // request_id (as JSON) -> resolvers, oldest first
    this._nextId = 1;
    this._attempt = 0;
    this._timer = null;
    this._stopped = false;
    this._everReady = false;
  }

  start() {
    this._stopped = false;
    if (!this.socket && this._timer === null) this._open();
  }

  stop() {
    this._stopped = true;
    clearTimeout(this._timer);
    this._timer = null;
    this.socket?.close(1000);
  }

  /** Reconnect now (e.g. after signing in or out, or when the network comes back). */
  restart() {
    clearTimeout(this._timer);
    this._timer = null;
    this._attempt = 0;
    if (this.socket) this.socket.close(1000, "restart");
    else if (!this._stopped) this._open();
  }

  /** Send one request; resolves with its reply, whatever its status. */
  request(action, params = {}, requestId = `r${this._nextId++}`) {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return Promise.reject(new NotConnected());
    return new Promise((resolve, reject) => {
      const key = JSON.stringify(requestId);
      if (!this._pending.has(key)) this._pending.set(key, []);
      this._pending.get(key).push({ resolve, reject });
      socket.send(JSON.stringify({ ...params, action, request_id: requestId }));
    });
  }

  /** Add tag to subscription; resolves with the reply. */
  async subscribe(subscription, tag, since = null) {
    const params = { hashtag: tag };
    if (since !== null) params.since = since;
    const reply = await this.request("subscribe_to_hashtag", params, subscription.requestId);
    if (reply.response_status === 201) {
      subscription.tags.add(tag);
      subscription.see(reply.data);
    }
    return reply;
  }

  async unsubscribe(subscription, tag) {
    const reply = await this.request(
      "unsubscribe_from_hashtag",
      { hashtag: tag },
      subscription.requestId,
    );
    if (reply.response_status === 204) subscription.tags.delete(tag);
    return reply;
  }

  _setState(state, reason = "", retryInMs = null, code = null) {
    this.dispatchEvent(new CustomEvent("state", { detail: { state, reason, retryInMs, code } }));
  }

  _open() {
    this._timer = null;
    this.ready = false;
    this._setState("connecting");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/ws`);
    this.socket = socket;
    socket.addEventListener("open", () => this._resume(socket));
    socket.addEventListener("message", (message) => this._receive(message.data));
    socket.addEventListener("close", (close) => this._closed(socket, close.code));
  }

  async _resume(socket) {
    let recovered = true;
    try {
      if (this.token) {
        const reply = await this.request("authenticate", { token: this.token });
        if (reply.response_status === 200) {
          this.userId = reply.data.user;
        } else {
          this.token = null;
          this.userId = null;
          this.dispatchEvent(new CustomEvent("signed-out", { detail: { reply } }));
        }
      }
      if (this.token) {
        const replies = [];
        for (const subscription of this.subscriptions.values()) {
          // One resume point per subscription, read before its first reply raises it.
          const since = subscription.safe;
          for (const tag of subscription.tags) {
            replies.push(this.subscribe(subscription, tag, since));
          }
        }
        for (const reply of await Promise.all(replies)) {
          if (reply.response_status !== 201) {
            this.dispatchEvent(new CustomEvent("failed", { detail: { reply } }));
          } else if (reply.data.recovered === false) {
            recovered = false;
          }
        }
      }
    } catch (error) {
      if (error instanceof NotConnected || socket !== this.socket) return; // closed meanwhile
      throw error;
    }
    if (socket !== this.socket) return;
    this._attempt = 0;
    this.ready = true;
    this._setState("online");
    const first = !this._everReady;
    this._everReady = true;
    this.dispatchEvent(new CustomEvent("ready", { detail: { first, recovered } }));
  }

  _receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame && frame.stream !== undefined && frame.payload) frame = frame.payload;
    if (!frame || typeof frame !== "object") return;
    if ("response_status" in frame) {
      const waiting = this._pending.get(JSON.stringify(frame.request_id));
      const next = waiting?.shift();
      if (waiting && waiting.length === 0) this._pending.delete(JSON.stringify(frame.request_id));
      next?.resolve(frame);
      return;
    }
    if (!EVENT_ACTIONS.has(frame.action)) return;
    const subscription = this.subscriptions.get(frame.request_id);
    if (!subscription) return;
    subscription.see(frame);
    this.dispatchEvent(new CustomEvent("event", { detail: { frame, subscription } }));
  }

  _closed(socket, code) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.ready = false;
    for (const waiting of this._pending.values()) {
      for (const { reject } of waiting) reject(new NotConnected());
    }
    this._pending.clear();
    if (this._stopped) {
      this._setState("offline", describeClose(code));
      return;
    }
    // Jittered: the clients one worker dropped together do not all come back at once.
    const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this._attempt);
    const delay = code === 1000 ? 0 : Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this._attempt += 1;
    this._setState("offline", code === 1000 ? "" : describeClose(code), delay, code);
    this._timer = setTimeout(() => this._open(), delay);
  }
}
