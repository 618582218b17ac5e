"""The CLI's one error type, and invalid input put in words for it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class CommandError(Exception):
    """Printed as `livepost: <message>` (exit 1), without a traceback."""


def invalid_fields(errors: Iterable[Mapping[str, Any]]) -> str:
    """`field: what is wrong; …` from pydantic's error list."""
    parts = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        what = _in_words(str(error.get("type", "")), error.get("ctx") or {}, error.get("msg"))
        parts.append(f"{'.'.join(loc)}: {what}" if loc else what)
    return "; ".join(parts) or "invalid input"


def _in_words(kind: str, ctx: Mapping[str, Any], message: Any) -> str:
    if kind == "missing":
        return "is required"
    if kind == "string_type":
        return "must be text"
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return "may not be empty" if least == 1 else f"must be at least {least} characters long"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_pattern_mismatch":
        from app.models import USERNAME_PATTERN  # (imported late: it loads SQLModel)

        if ctx.get("pattern") == USERNAME_PATTERN:  # pydantic would print the expression
            return "may contain only letters, digits and . @ + - _"
    return str(message)  # livepost's own messages (DRF's texts) are words already
