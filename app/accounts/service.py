"""Accounts: registration, sign-in and token resolution (no web framework here)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import USERNAME_MAX_LENGTH, USERNAME_PATTERN, User, utcnow
from app.security import TokenClaims, hash_password, issue_token, read_token, verify_password

users = User.__table__  # type: ignore[attr-defined]


class UsernameTaken(Exception):
    """Registration with a username that exists."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: who, and until when the token holds."""

    user_id: int
    expires_at: float


class AccountService:
    def __init__(self, engine: AsyncEngine, secret: str, token_lifetime_seconds: int) -> None:
        self._engine = engine
        self._secret = secret
        self._lifetime = token_lifetime_seconds

    async def register(self, username: str, password: str, *, is_admin: bool = False) -> int:
        """Create a user; returns its id."""
        # argon2 is CPU work by design: keep it off the event loop.
        password_hash = await asyncio.to_thread(hash_password, password)
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    insert(users)
                    .values(
                        username=username,
                        password_hash=password_hash,
                        created_at=utcnow(),
                        is_admin=is_admin,
                    )
                    .returning(users.c.id)
                )
                return int(result.scalar_one())
        except IntegrityError as error:
            raise UsernameTaken(username) from error

    async def sign_in(self, username: str, password: str) -> str | None:
        """A fresh token for valid credentials of an active user, else None (same work and
        the same answer either way: a deactivated user looks like a wrong password)."""
        row = await self._checked(username, password)
        return None if row is None else self.token_for(int(row.id))

    async def admin_sign_in(self, username: str, password: str) -> int | None:
        """The user id for valid credentials of an active admin, else None."""
        row = await self._checked(username, password)
        return None if row is None or not row.is_admin else int(row.id)

    async def _checked(self, username: str, password: str) -> Row[Any] | None:
        """The active user's row when the password is theirs."""
        row = None
        if _could_exist(username):  # NUL or a surrogate would not even reach the database
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(
                            users.c.id, users.c.password_hash, users.c.is_admin, users.c.is_active
                        ).where(users.c.username == username)
                    )
                ).first()
        valid = await asyncio.to_thread(
            verify_password, password, row.password_hash if row else None
        )
        if not valid or row is None or not row.is_active:
            return None
        return row

    def token_for(self, user_id: int) -> str:
        return issue_token(user_id, self._secret, self._lifetime)

    async def identify(self, token: str) -> Identity | None:
        """The identity behind a token, or None if it is invalid or its user is gone or
        deactivated (one answer for all: a deactivated user's token is just invalid)."""
        claims: TokenClaims | None = read_token(token, self._secret)
        if claims is None or claims.user_id > 2**63 - 1:
            return None
        if await self.user_id(claims.user_id) is None:
            return None
        return Identity(user_id=claims.user_id, expires_at=claims.expires_at)

    async def user_id(self, user_id: int) -> int | None:
        """user_id if that user exists and is active."""
        async with self._engine.connect() as conn:
            found = (
                await conn.execute(
                    select(users.c.id).where(users.c.id == user_id, users.c.is_active)
                )
            ).first()
        return None if found is None else int(found.id)

    async def is_admin(self, user_id: int) -> bool:
        """An active admin (checked on every admin request: a revoked flag takes effect)."""
        async with self._engine.connect() as conn:
            found = (
                await conn.execute(
                    select(users.c.id).where(
                        users.c.id == user_id, users.c.is_admin, users.c.is_active
                    )
                )
            ).first()
        return found is not None

    async def set_flags(
        self, user_id: int, *, is_admin: bool | None = None, is_active: bool | None = None
    ) -> bool:
        """Change a user's flags; False when there is no such user. Deactivating through
        this alone refuses new tokens but leaves open connections: Runtime.deactivate_user
        closes those too."""
        values: dict[str, bool] = {}
        if is_admin is not None:
            values["is_admin"] = is_admin
        if is_active is not None:
            values["is_active"] = is_active
        async with self._engine.begin() as conn:
            if not values:
                found = await conn.execute(select(users.c.id).where(users.c.id == user_id))
                return found.first() is not None
            result = await conn.execute(update(users).where(users.c.id == user_id).values(values))
            return bool(result.rowcount)

    async def delete_user(self, user_id: int) -> None:
        """Delete the account row (its posts must be gone already: see app/admin)."""
        async with self._engine.begin() as conn:
            await conn.execute(users.delete().where(users.c.id == user_id))

    async def user_id_by_name(self, username: str) -> int | None:
        if not _could_exist(username):
            return None
        async with self._engine.connect() as conn:
            found = (
                await conn.execute(select(users.c.id).where(users.c.username == username))
            ).first()
        return None if found is None else int(found.id)


_USERNAME = re.compile(USERNAME_PATTERN)


def _could_exist(username: str) -> bool:
    """Only names registration accepts can be looked up."""
    return len(username) <= USERNAME_MAX_LENGTH and _USERNAME.match(username) is not None
