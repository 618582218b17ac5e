"""Post writes from the command line, through the same PostService as every other path.

With Redis the CLI process publishes like any worker. With the in-process broker nobody would
hear it publish, so the write is only logged, flagged for the relays: each running server's
relay publishes it at its next round (RELAY_INTERVAL_SECONDS; on PostgreSQL NOTIFY wakes it at
once), and a server started later publishes it when it starts. The CLI needs only the
server's DATABASE_URL, never its address (app/runtime.py, app/posts/statements.py).
"""

from __future__ import annotations

from typing import Any

from app.cli.errors import CommandError
from app.config import Settings
from app.posts.service import PostNotFound
from app.posts.validation import FieldErrors
from app.runtime import Runtime


async def write_post(
    settings: Settings, operation: str, username: str, pk: int | None, body: str | None
) -> dict[str, Any] | None:
    """create / edit / delete as `username`; returns the post (None for delete)."""
    runtime = await Runtime.start(settings)
    try:
        user_id = await runtime.accounts.user_id_by_name(username)
        if user_id is None:
            raise CommandError(f"no user {username!r}")
        if operation == "create":
            return await runtime.posts.create(user_id, body)
        assert pk is not None
        if operation == "edit":
            return await runtime.posts.update(user_id, pk, body)
        await runtime.posts.delete(user_id, pk)
        return None
    except PostNotFound:
        raise CommandError("Not found") from None
    except FieldErrors as error:
        raise CommandError(_describe(error.errors)) from None
    finally:
        await runtime.close()


def _describe(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
