"""Protocol failures with DCRF's status codes and exact texts."""

from __future__ import annotations

from typing import Any

PERMISSION_DENIED = "You do not have permission to perform this action."
NOT_FOUND = "Not found"
ACTION_MISSING = "Unable to find action in message body."
INVALID_JSON = "Invalid JSON."
TOO_DEEP = "JSON nested too deeply."
NOT_AN_OBJECT = "Expected a JSON object."
NOT_TEXT = "Expected a text frame."
UNKNOWN_STREAM = "Unknown stream."
INVALID_TOKEN = "Invalid token."
INVALID_HASHTAG = "Enter a valid hashtag."
SERVER_ERROR = "A server error occurred."
UNAVAILABLE = "Service temporarily unavailable, try again later."
THROTTLED = "Request was throttled."
TOO_MANY_CONNECTIONS = "Too many connections for this user."


class ProtocolError(Exception):
    """Answered as a reply with this status and errors list; the connection stays open."""

    def __init__(self, status: int, errors: list[Any]) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = errors


def field_error(field: str, message: str) -> ProtocolError:
    return ProtocolError(400, [{field: [message]}])


def not_found() -> ProtocolError:
    return ProtocolError(404, [NOT_FOUND])


def permission_denied() -> ProtocolError:
    return ProtocolError(403, [PERMISSION_DENIED])


def method_not_allowed(action: object) -> ProtocolError:
    return ProtocolError(405, [f'Method "{action}" not allowed.'])
