"""Who gets into /admin: active users with the admin flag, signed in with their password.

The sign-in is throttled by the same per-username and per-address counters as
`POST /auth/token` (app/accounts/throttle.py), so the admin's form is no way around them.
The session is a signed cookie (Starlette's SessionMiddleware, itsdangerous) holding only the
user id: HttpOnly, SameSite=Strict (no other site can send a request that carries it, which
is what keeps the admin's forms safe from cross-site posts), path /admin, signed with
ADMIN_SECRET, and valid ADMIN_SESSION_SECONDS. Every request checks again that the user is
still an active admin, so revoking the flag or deactivating the user locks them out at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqladmin.authentication import AuthenticationBackend
from starlette.requests import Request
from starlette.responses import Response

from app.accounts.throttle import retry_after_header
from app.config import Settings
from app.runtime import Runtime

SESSION_COOKIE = "livepost_admin"
SESSION_KEY = "user_id"  # what sqladmin's get_user_id reads by default
TOO_MANY_SIGN_INS = "Too many failed sign-ins; try again later."


class AdminAuth(AuthenticationBackend):
    def __init__(self, settings: Settings, runtime: Callable[[], Runtime], base_url: str) -> None:
        super().__init__(
            settings.admin_session_secret,
            session_cookie=SESSION_COOKIE,
            max_age=settings.admin_session_seconds,
            path=base_url,
            same_site="strict",
            https_only=settings.admin_cookie_secure,
        )
        self._runtime = runtime
        # sqladmin's templates, set by app.admin.mount once the Admin exists (for the 429 page).
        self.templates: Any = None

    async def login(self, request: Request) -> Response | bool:
        runtime = self._runtime()
        form = await request.form()
        username, password = form.get("username"), form.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            return False
        throttle = runtime.throttles.login
        address = request.client.host if request.client else "unknown"
        wait = throttle.attempt(username, address)  # a failure until it succeeds
        if wait is not None:
            response: Response = await self.templates.TemplateResponse(
                request, "sqladmin/login.html", {"error": TOO_MANY_SIGN_INS}, status_code=429
            )
            response.headers["Retry-After"] = retry_after_header(wait)
            return response
        try:
            user_id = await runtime.accounts.admin_sign_in(username, password)
        except BaseException:
            throttle.refund(username, address)  # an outage is not a wrong password
            raise
        if user_id is None:
            # A wrong password, an unknown or deactivated user, or not an admin: one answer,
            # and it counts (the right password of a non-admin is no way in either).
            return False
        throttle.refund(username, address)
        request.session.clear()
        request.session[SESSION_KEY] = user_id
        return True

    async def logout(self, request: Request) -> Response | bool:
        request.session.clear()
        return True

    async def authenticate(self, request: Request) -> Response | bool:
        user_id = request.session.get(SESSION_KEY)
        if not isinstance(user_id, int) or not await self._runtime().accounts.is_admin(user_id):
            request.session.clear()
            return False
        return True
