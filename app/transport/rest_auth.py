"""Registration and the OAuth2 password flow that issues access tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm

from app.accounts.service import UsernameTaken
from app.models import Token, UserCreate, UserPublic
from app.transport.deps import RuntimeDep

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/register",
    response_model=UserPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        409: {
            "description": "Username taken.",
            "content": {"application/json": {"example": {"detail": "Username already taken."}}},
        }
    },
)
async def register(runtime: RuntimeDep, user: UserCreate) -> UserPublic:
    """Create a user."""
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
        }
    },
)
async def token(
    runtime: RuntimeDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> Token:
    """Exchange username and password (form fields) for a bearer token."""
    access_token = await runtime.accounts.sign_in(form.username, form.password)
    if access_token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Incorrect username or password.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Token(access_token=access_token)
