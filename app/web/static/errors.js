// What the server said, in words a person can act on: WebSocket replies, close codes, REST.

const FIELD_NAMES = { body: "Post", hashtag: "Hashtag", limit: "Limit", before: "Older than" };

// DRF's error lists: strings, or objects mapping a field to its messages.
function errorTexts(errors) {
  const texts = [];
  for (const error of Array.isArray(errors) ? errors : []) {
    if (typeof error === "string") {
      texts.push(error);
    } else if (error && typeof error === "object") {
      for (const [field, messages] of Object.entries(error)) {
        const name = FIELD_NAMES[field] ?? field;
        for (const message of [].concat(messages)) texts.push(`${name}: ${message}`);
      }
    }
  }
  return texts;
}

/** A failed reply (`response_status` 400 and up) as one sentence or two. */
export function describeReply(reply, { signedIn = true } = {}) {
  const texts = errorTexts(reply.errors);
  switch (reply.response_status) {
    case 400:
      return texts.join(" ") || "The server did not accept that request.";
    case 401:
      return "Your session is no longer valid: please sign in again.";
    case 403:
      return signedIn
        ? "You are not allowed to do that."
        : "You are not allowed to do that: sign in first.";
    case 404:
      return "That post no longer exists, or it is not yours.";
    case 429:
      return "Too many requests: slow down and try again in a moment.";
    case 503:
      return "The service is temporarily unavailable: try again shortly.";
    case 500:
      return "Something went wrong on the server: try again.";
    default:
      return texts.join(" ") || `The server refused the request (${reply.response_status}).`;
  }
}

/** Why the live connection closed, for the status line. */
export function describeClose(code) {
  switch (code) {
    case 1000:
      return "Disconnected.";
    case 1001:
    case 1012:
      return "The server is restarting.";
    case 1008:
      return "The server closed the connection: too many requests, or this page may not connect.";
    case 1009:
      return "The server closed the connection: a message was too large.";
    case 1011:
      return "The server closed the connection after an error.";
    case 1013:
      return "The connection was too slow to keep up with live posts.";
    default:
      return "The connection was lost.";
  }
}

/** A REST failure (FastAPI's `{"detail": ...}`) in words. */
export function describeHttp(status, body) {
  const detail = body && body.detail;
  if (status === 422 && Array.isArray(detail)) {
    return detail
      .map((item) => {
        const field = Array.isArray(item.loc) ? item.loc[item.loc.length - 1] : "";
        const name = { username: "Username", password: "Password" }[field] ?? field;
        return name ? `${name}: ${item.msg}.` : `${item.msg}.`;
      })
      .join(" ");
  }
  if (typeof detail === "string") return detail;
  if (status === 429) return "Too many attempts: wait a while and try again.";
  if (status >= 500) return "The service is temporarily unavailable: try again shortly.";
  return `The server refused the request (${status}).`;
}
