"""Field validation with DRF's exact messages, shared by every write path."""

from __future__ import annotations

from typing import Any

from app.models import BODY_MAX_LENGTH

REQUIRED = "This field is required."
BLANK = "This field may not be blank."
NULL = "This field may not be null."
NOT_A_STRING = "Not a valid string."
INVALID_INTEGER = "A valid integer is required."

MISSING: Any = object()  # a field absent from the input


class FieldErrors(Exception):
    """Invalid input: maps field names to DRF-style messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def clean_body(value: object = MISSING) -> str:
    """DRF CharField(max_length=256, trim_whitespace=True), but numbers are not strings."""
    if value is MISSING:
        raise FieldErrors({"body": [REQUIRED]})
    if value is None:
        raise FieldErrors({"body": [NULL]})
    if not isinstance(value, str):
        raise FieldErrors({"body": [NOT_A_STRING]})
    body = value.strip()
    if not body:
        raise FieldErrors({"body": [BLANK]})
    if len(body) > BODY_MAX_LENGTH:
        raise FieldErrors(
            {"body": [f"Ensure this field has no more than {BODY_MAX_LENGTH} characters."]}
        )
    # Neither database can store these; DRF's validators reject them with these texts.
    if "\x00" in body:
        raise FieldErrors({"body": ["Null characters are not allowed."]})
    surrogate = _first_surrogate(body)
    if surrogate is not None:
        raise FieldErrors({"body": [f"Surrogate characters are not allowed: U+{surrogate:X}."]})
    return body


def is_storable(text: str) -> bool:
    """Text both databases can store: no NUL, no lone surrogate."""
    return "\x00" not in text and _first_surrogate(text) is None


def _first_surrogate(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return ord(text[error.start])
    return None


def clean_integer(field: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """DRF IntegerField: ints and integral strings; bounds with DRF's messages."""
    number: int
    if isinstance(value, bool):
        raise FieldErrors({field: [INVALID_INTEGER]})
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and len(value) <= 1000:
        text = value.strip()
        if text.endswith(".0"):
            text = text[:-2]
        if not (text.lstrip("+-").isdecimal() and text.isascii()):
            raise FieldErrors({field: [INVALID_INTEGER]})
        number = int(text)
    else:
        raise FieldErrors({field: [INVALID_INTEGER]})
    if number < minimum:
        raise FieldErrors({field: [f"Ensure this value is greater than or equal to {minimum}."]})
    if maximum is not None and number > maximum:
        raise FieldErrors({field: [f"Ensure this value is less than or equal to {maximum}."]})
    return number


def clean_pk(value: object) -> int | None:
    """A pk as Django's lookup accepts it (int or digit string); None means "Not found"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdecimal()):
            return None
        value = int(text)
    if not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
        return None
    return value
