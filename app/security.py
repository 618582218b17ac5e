"""Password hashing (argon2id) and JWT access tokens (python-jose, HS256 pinned)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from jose import JWTError, jwt

ALGORITHM = "HS256"

# OWASP's argon2id minimum (19 MiB, t=2, p=1): strong, and cheap enough that a benchmark can
# register hundreds of users without starving the event loop's thread pool.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the username does not exist, so a miss costs what a hit costs.
_DUMMY_HASH = _hasher.hash("livepost-timing-equaliser")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant-work check: an unknown user still pays for one verification."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    expires_at: float


def issue_token(user_id: int, secret: str, lifetime_seconds: int) -> str:
    now = int(time.time())
    claims = {"sub": str(user_id), "iat": now, "exp": now + lifetime_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def read_token(token: str, secret: str) -> TokenClaims | None:
    """The token's claims, or None for anything not signed by us with HS256 and unexpired."""
    if not isinstance(token, str) or not token or len(token) > 4096:
        return None
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require_exp": True, "require_sub": True, "verify_aud": False},
        )
        sub = claims["sub"]
        exp = claims["exp"]
        if not (isinstance(sub, str) and sub.isdigit() and isinstance(exp, int | float)):
            return None
        return TokenClaims(user_id=int(sub), expires_at=float(exp))
    except (JWTError, KeyError, ValueError, TypeError):
        return None
