"""Registration and the OAuth2 password flow that issues access tokens, both throttled."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from app.accounts.service import UsernameTaken
from app.accounts.throttle import retry_after_header
from app.models import Token, UserCreate, UserPublic
from app.transport.deps import RuntimeDep

router = APIRouter(prefix="/auth", tags=["auth"])

TOO_MANY_SIGN_INS = "Too many failed sign-ins; try again later."
TOO_MANY_REGISTRATIONS = "Too many registrations; try again later."


def _throttled(detail: str) -> dict[int | str, dict[str, object]]:
    return {
        429: {
            "description": "Too many attempts: wait Retry-After seconds.",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            "content": {"application/json": {"example": {"detail": detail}}},
        }
    }


def _too_many(detail: str, wait: float) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS, detail, headers={"Retry-After": retry_after_header(wait)}
    )


def client_address(request: Request) -> str:
    """The caller's address (uvicorn has already applied X-Forwarded-For of trusted proxies)."""
    return request.client.host if request.client else "unknown"


@router.post(
    "/register",
    response_model=UserPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        409: {
            "description": "Username taken.",
            "content": {"application/json": {"example": {"detail": "Username already taken."}}},
        },
        **_throttled(TOO_MANY_REGISTRATIONS),
    },
)
async def register(runtime: RuntimeDep, request: Request, user: UserCreate) -> UserPublic:
    """Create a user (a limited number per client address in a window of time)."""
    # Every attempt counts, taken or not: each one costs an argon2 hash.
    wait = runtime.throttles.registrations.hit(client_address(request))
    if wait is not None:
        raise _too_many(TOO_MANY_REGISTRATIONS, wait)
    try:
        user_id = await runtime.accounts.register(user.username, user.password)
    except UsernameTaken:
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken.") from None
    return UserPublic(id=user_id, username=user.username)


@router.post(
    "/token",
    response_model=Token,
    responses={
        401: {
            "description": "Wrong username or password.",
            "content": {
                "application/json": {"example": {"detail": "Incorrect username or password."}}
            },
        },
        **_throttled(TOO_MANY_SIGN_INS),
    },
)
async def token(
    runtime: RuntimeDep, request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> Token:
    """Exchange username and password (form fields) for a bearer token.

    After too many failed sign-ins for a username or from an address, every attempt is
    answered 429 before the password is looked at, whether the username exists or not."""
    throttle = runtime.throttles.login
    address = client_address(request)
    wait = throttle.attempt(form.username, address)  # counted as a failure until it succeeds
    if wait is not None:
        raise _too_many(TOO_MANY_SIGN_INS, wait)
    try:
        access_token = await runtime.accounts.sign_in(form.username, form.password)
    except BaseException:
        throttle.refund(form.username, address)  # an outage is not a wrong password
        raise
    if access_token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Incorrect username or password.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    throttle.refund(form.username, address)  # a successful sign-in never counts
    return Token(access_token=access_token)
