"""FastAPI dependencies: the worker's runtime and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer

from app.accounts.service import Identity
from app.runtime import Runtime

_bearer = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def require_identity(
    runtime: RuntimeDep, token: Annotated[str | None, Depends(_bearer)]
) -> Identity:
    """The bearer token's identity, or 401."""
    if not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Not authenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    identity = await runtime.accounts.identify(token)
    if identity is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Invalid token.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return identity


IdentityDep = Annotated[Identity, Depends(require_identity)]
