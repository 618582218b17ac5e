"""A post as clients see it (replies, events, REST), built the same way on every path."""

from __future__ import annotations

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


def iso(moment: datetime) -> str:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()
