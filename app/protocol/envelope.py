"""Frames in and out: JSON decoding that never raises, DCRF reply shape, multiplexed streams."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from app.protocol.errors import INVALID_JSON, NOT_AN_OBJECT, TOO_DEEP, UNKNOWN_STREAM, ProtocolError

STREAM = "posts"


def dumps(value: Any) -> str:
    """JSON text; orjson for speed, the stdlib for what orjson refuses (huge ints, surrogates)."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# orjson reads integers beyond 64 bits as floats, silently; a run of 19 digits (-2**63 - 1 has
# 19) sends the text to the stdlib parser, which keeps them exact (echoes must be verbatim).
_LONG_NUMBER = re.compile(r"\d{19}")


def loads(text: str) -> Any:
    """Parse strict JSON or raise ProtocolError(400)."""
    if not _LONG_NUMBER.search(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    # The stdlib also takes valid JSON that orjson declines (escaped lone surrogates).
    # NaN and Infinity stay invalid.
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError(400, [TOO_DEEP]) from None
    except ValueError:
        raise ProtocolError(400, [INVALID_JSON]) from None


@dataclass(slots=True)
class Frame:
    """One decoded request: its stream (None when bare) and the request object."""

    stream: Any
    request: dict[str, Any]

    @property
    def multiplexed(self) -> bool:
        return self.stream is not None


class FrameError(Exception):
    """A frame that cannot be dispatched: answered with this reply, in this framing."""

    def __init__(self, error: ProtocolError, stream: Any = None, request: Any = None) -> None:
        super().__init__(error)
        self.error = error
        self.stream = stream
        self.request = request if isinstance(request, dict) else {}


def decode_frame(text: str) -> Frame:
    """Text frame -> Frame; raises FrameError for anything that is not a request."""
    try:
        message = loads(text)
    except ProtocolError as error:
        raise FrameError(error) from None
    if not isinstance(message, dict):
        raise FrameError(ProtocolError(400, [NOT_AN_OBJECT]))
    if "stream" in message and "action" not in message:
        stream, payload = message["stream"], message.get("payload")
        if stream is None:
            stream = ""  # still answered wrapped, as it came
        if not isinstance(payload, dict):
            raise FrameError(ProtocolError(400, [NOT_AN_OBJECT]), stream)
        if stream != STREAM:
            raise FrameError(ProtocolError(404, [UNKNOWN_STREAM]), stream, payload)
        return Frame(stream, payload)
    return Frame(None, message)


def reply(
    action: Any,
    request_id: Any,
    status: int,
    data: Any = None,
    errors: list[Any] | None = None,
    stream: Any = None,
) -> str:
    """A DCRF reply, wrapped as {"stream", "payload"} when the request was."""
    payload = {
        "errors": errors if errors is not None else [],
        "data": data,
        "action": action,
        "response_status": status,
        "request_id": request_id,
    }
    body = _dumps_or_degrade(payload)
    if stream is None:
        return body
    return '{"stream":' + _dumps_or_degrade(stream) + ',"payload":' + body + "}"


def _dumps_or_degrade(value: Any) -> str:
    try:
        return dumps(value)
    except (RecursionError, ValueError):
        # An echo the stdlib cannot write back (nesting deeper than its limit): drop the echo.
        if isinstance(value, dict):
            return dumps({**value, "action": None, "request_id": None})
        return "null"
