// Registering and signing in over REST; the token lives in sessionStorage (this tab only).

import { describeHttp } from "./errors.js";

const KEY = "livepost.session";

export class AccountError extends Error {}

export function savedSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(KEY) ?? "null");
    return saved && typeof saved.token === "string" ? saved : null;
  } catch {
    return null;
  }
}

export function forgetSession() {
  sessionStorage.removeItem(KEY);
}

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  if (!response.ok) throw new AccountError(describeHttp(response.status, body));
  return body;
}

async function send(path, init) {
  try {
    return await fetch(path, { ...init, credentials: "omit", cache: "no-store" });
  } catch {
    throw new AccountError("The server cannot be reached: check the connection and try again.");
  }
}

/** Sign in (POST /auth/token, a form); returns and keeps {username, token}. */
export async function signIn(username, password) {
  const form = new URLSearchParams({ username, password });
  const body = await answer(await send("/auth/token", { method: "POST", body: form }));
  const session = { username, token: body.access_token };
  sessionStorage.setItem(KEY, JSON.stringify(session));
  return session;
}

/** Create the account (POST /auth/register, JSON), then sign in. */
export async function register(username, password) {
  await answer(
    await send("/auth/register", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username, password }),
    }),
  );
  return signIn(username, password);
}
