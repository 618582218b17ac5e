"""A post as clients see it (replies, events, REST), built the same way on every path."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

PostData = dict[str, Any]


def post_data(pk: int, author: int, body: str, created_at: datetime, version: int) -> PostData:
    return {
        "pk": pk,
        "author": author,
        "body": body,
        "created_at": iso(created_at),
        "version": version,
    }


def post_list(rows: Iterable[Any]) -> list[PostData]:
    """Rows of (pk, author, body, created_at, version) as posts: what `list` returns, up to
    500 at a time, so without a function call or attribute lookup per row."""
    return [
        {
            "pk": pk,
            "author": author,
            "body": body,
            "created_at": created.isoformat() if created.tzinfo is not None else iso(created),
            "version": version,
        }
        for pk, author, body, created, version in rows
    ]


def iso(moment: datetime) -> str:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()
