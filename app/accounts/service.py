"""Accounts: registration, sign-in and token resolution (no web framework here)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from sqlalchemy import insert, select
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

    async def register(self, username: str, password: str) -> int:
        """Create a user; returns its id."""
        # argon2 is CPU work by design: keep it off the event loop.
        password_hash = await asyncio.to_thread(hash_password, password)
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    insert(users)
                    .values(username=username, password_hash=password_hash, created_at=utcnow())
                    .returning(users.c.id)
                )
                return int(result.scalar_one())
        except IntegrityError as error:
            raise UsernameTaken(username) from error

    async def sign_in(self, username: str, password: str) -> str | None:
        """A fresh token for valid credentials, else None (same work either way)."""
        row = None
        if _could_exist(username):  # NUL or a surrogate would not even reach the database
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(users.c.id, users.c.password_hash).where(
                            users.c.username == username
                        )
                    )
                ).first()
        valid = await asyncio.to_thread(
            verify_password, password, row.password_hash if row else None
        )
        if not valid or row is None:
            return None
        return self.token_for(int(row.id))

    def token_for(self, user_id: int) -> str:
        return issue_token(user_id, self._secret, self._lifetime)

    async def identify(self, token: str) -> Identity | None:
        """The identity behind a token, or None if it is invalid or its user is gone."""
        claims: TokenClaims | None = read_token(token, self._secret)
        if claims is None or claims.user_id > 2**63 - 1:
            return None
        if await self.user_id(claims.user_id) is None:
            return None
        return Identity(user_id=claims.user_id, expires_at=claims.expires_at)

    async def user_id(self, user_id: int) -> int | None:
        async with self._engine.connect() as conn:
            found = (await conn.execute(select(users.c.id).where(users.c.id == user_id))).first()
        return None if found is None else int(found.id)

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
