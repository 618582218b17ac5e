"""The actions of the live-post consumer: parameters in, (data, status) out.

Each handler reads DCRF's parameters from the request, calls the post service or the hub and
raises ProtocolError for anything a client did wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from app.posts.hashtags import normalize_hashtag
from app.posts.service import UNCHANGED, PostNotFound
from app.posts.validation import MISSING, REQUIRED, FieldErrors, clean_integer, clean_pk
from app.protocol.errors import (
    INVALID_HASHTAG,
    INVALID_TOKEN,
    ProtocolError,
    field_error,
    not_found,
)

if TYPE_CHECKING:
    from app.protocol.session import Session

Result = tuple[Any, int]
Action = Callable[["Session", dict[str, Any]], Awaitable[Result]]

MAX_LIMIT = 500
_MAX_PK = 2**63 - 1


def _required(request: dict[str, Any], name: str) -> Any:
    if name not in request:
        raise field_error(name, REQUIRED)
    return request[name]


def _pk(request: dict[str, Any]) -> int:
    pk = clean_pk(_required(request, "pk"))
    if pk is None:
        raise not_found()  # Django's lookup turns a malformed pk into 404
    return pk


def _data(request: dict[str, Any]) -> dict[str, Any]:
    data = _required(request, "data")
    if data is None:
        # What DRF's serializer says for data=None.
        raise ProtocolError(400, [{"non_field_errors": ["No data provided"]}])
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ProtocolError(
            400, [{"non_field_errors": [f"Invalid data. Expected a dictionary, but got {kind}."]}]
        )
    return data


def _list_params(request: dict[str, Any]) -> tuple[str | None, int, int | None]:
    """list filters, from the top level or from `data`; every bad one reported at once."""
    data = request.get("data")
    nested = data if isinstance(data, dict) else {}

    def param(name: str) -> Any:
        value = request.get(name)
        return nested.get(name) if value is None else value

    errors: dict[str, list[str]] = {}
    body_contains = param("body_contains")
    if body_contains is not None and not isinstance(body_contains, str):
        errors["body_contains"] = ["Not a valid string."]
    limit, before = MAX_LIMIT, None
    try:
        raw = param("limit")
        if raw is not None:
            limit = clean_integer("limit", raw, minimum=1, maximum=MAX_LIMIT)
    except FieldErrors as error:
        errors.update(error.errors)
    try:
        raw = param("before")
        if raw is not None:
            # A cursor beyond any pk simply excludes nothing.
            before = min(clean_integer("before", raw, minimum=1), _MAX_PK)
    except FieldErrors as error:
        errors.update(error.errors)
    if errors:
        raise ProtocolError(400, [errors])
    return body_contains, limit, before


async def list_posts(session: Session, request: dict[str, Any]) -> Result:
    body_contains, limit, before = _list_params(request)
    return await session.posts.list(body_contains=body_contains, limit=limit, before=before), 200


async def retrieve(session: Session, request: dict[str, Any]) -> Result:
    pk = _pk(request)
    try:
        return await session.posts.get(pk), 200
    except PostNotFound:
        raise not_found() from None


async def create(session: Session, request: dict[str, Any]) -> Result:
    data = _data(request)
    return await session.posts.create(session.user_id, data.get("body", MISSING)), 201


async def update(session: Session, request: dict[str, Any]) -> Result:
    pk = _pk(request)
    data = _data(request)
    return await _write(session.posts.update(session.user_id, pk, data.get("body", MISSING))), 200


async def patch(session: Session, request: dict[str, Any]) -> Result:
    pk = _pk(request)
    data = _data(request)
    return await _write(session.posts.update(session.user_id, pk, data.get("body", UNCHANGED))), 200


async def delete(session: Session, request: dict[str, Any]) -> Result:
    pk = _pk(request)
    await _write(session.posts.delete(session.user_id, pk))
    return None, 204


async def _write(operation: Awaitable[Any]) -> Any:
    try:
        return await operation
    except PostNotFound:
        raise not_found() from None


def _hashtag(session: Session, request: dict[str, Any]) -> str:
    value = _required(request, "hashtag")
    limit = session.settings.hashtag_max_length
    tag = normalize_hashtag(value, max_length=limit)
    if tag is None:
        if isinstance(value, str) and normalize_hashtag(value, max_length=len(value)):
            raise field_error("hashtag", f"Ensure this field has no more than {limit} characters.")
        raise field_error("hashtag", INVALID_HASHTAG)
    return tag


def _since(request: dict[str, Any]) -> int | None:
    value = request.get("since")
    if value is None:
        return None
    try:
        return min(clean_integer("since", value, minimum=0), _MAX_PK)  # beyond: ahead of the log
    except FieldErrors as error:
        raise ProtocolError(400, [error.errors]) from None


async def subscribe_to_hashtag(session: Session, request: dict[str, Any]) -> Result:
    tag, since = _hashtag(session, request), _since(request)
    subscribed = await session.subscribe(tag, since)
    if since is None:
        return {"offset": subscribed.offset, "safe": subscribed.safe}, 201
    reply = {"offset": subscribed.offset, "safe": subscribed.safe}
    return reply | {"recovered": subscribed.recovered}, 201


async def unsubscribe_from_hashtag(session: Session, request: dict[str, Any]) -> Result:
    await session.unsubscribe(_hashtag(session, request))
    return {}, 204


async def authenticate(session: Session, request: dict[str, Any]) -> Result:
    token = _required(request, "token")
    if not await session.authenticate(token):
        raise ProtocolError(401, [INVALID_TOKEN])
    return {"user": session.user_id}, 200


ACTIONS: dict[str, Action] = {
    "list": list_posts,
    "retrieve": retrieve,
    "create": create,
    "update": update,
    "patch": patch,
    "delete": delete,
    "subscribe_to_hashtag": subscribe_to_hashtag,
    "unsubscribe_from_hashtag": unsubscribe_from_hashtag,
    "authenticate": authenticate,
}

# What an anonymous connection may do; everything else (unknown actions too) is 403.
ANONYMOUS_ACTIONS = frozenset({"list", "retrieve", "authenticate"})
