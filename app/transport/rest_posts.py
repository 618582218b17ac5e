"""REST mirrors of the post actions; every write goes through the post service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from app.models import PostBody, PostPatch, PostPublic
from app.posts.service import UNCHANGED, PostNotFound
from app.posts.validation import NULL, FieldErrors
from app.transport.deps import IdentityDep, RuntimeDep

router = APIRouter(prefix="/posts", tags=["posts"])

PkPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="The post's pk.", examples=[23])]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "No such post (or not yours to change).",
        "content": {"application/json": {"example": {"detail": "Not found"}}},
    }
}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "Missing or invalid bearer token.",
        "content": {"application/json": {"example": {"detail": "Not authenticated"}}},
    }
}


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "Not found")


def _invalid(error: FieldErrors) -> HTTPException:
    detail = [
        {"loc": ["body", field], "msg": message, "type": "value_error"}
        for field, messages in error.errors.items()
        for message in messages
    ]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)


@router.get("", response_model=list[PostPublic])
async def list_posts(
    runtime: RuntimeDep,
    body_contains: Annotated[
        str | None, Query(max_length=1000, description="Case-insensitive substring of the body.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many posts.")] = 500,
    before: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="Only posts with a smaller pk.")
    ] = None,
) -> Any:
    """List posts, newest first (the `list` action)."""
    return await runtime.posts.list(body_contains=body_contains, limit=limit, before=before)


@router.get("/{pk}", response_model=PostPublic, responses=_NOT_FOUND)
async def retrieve_post(runtime: RuntimeDep, pk: PkPath) -> Any:
    """One post (the `retrieve` action)."""
    try:
        return await runtime.posts.get(pk)
    except PostNotFound:
        raise _not_found() from None


@router.post(
    "", response_model=PostPublic, status_code=status.HTTP_201_CREATED, responses=_UNAUTHORIZED
)
async def create_post(runtime: RuntimeDep, identity: IdentityDep, post: PostBody) -> Any:
    """Create a post as the caller (the `create` action)."""
    try:
        return await runtime.posts.create(identity.user_id, post.body)
    except FieldErrors as error:
        raise _invalid(error) from None


async def _update(runtime: RuntimeDep, identity: IdentityDep, pk: int, body: object) -> Any:
    try:
        return await runtime.posts.update(identity.user_id, pk, body)
    except PostNotFound:
        raise _not_found() from None
    except FieldErrors as error:
        raise _invalid(error) from None


@router.put("/{pk}", response_model=PostPublic, responses={**_UNAUTHORIZED, **_NOT_FOUND})
async def update_post(
    runtime: RuntimeDep, identity: IdentityDep, pk: PkPath, post: PostBody
) -> Any:
    """Replace your post's body (the `update` action)."""
    return await _update(runtime, identity, pk, post.body)


@router.patch("/{pk}", response_model=PostPublic, responses={**_UNAUTHORIZED, **_NOT_FOUND})
async def patch_post(
    runtime: RuntimeDep, identity: IdentityDep, pk: PkPath, post: PostPatch
) -> Any:
    """Change the given fields of your post (the `patch` action)."""
    if post.body is None and "body" in post.model_fields_set:
        raise _invalid(FieldErrors({"body": [NULL]}))
    return await _update(runtime, identity, pk, UNCHANGED if post.body is None else post.body)


@router.delete(
    "/{pk}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**_UNAUTHORIZED, **_NOT_FOUND},
)
async def delete_post(runtime: RuntimeDep, identity: IdentityDep, pk: PkPath) -> Response:
    """Delete your post (the `delete` action); subscribers of its hashtags get `delete`."""
    try:
        await runtime.posts.delete(identity.user_id, pk)
    except PostNotFound:
        raise _not_found() from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)
