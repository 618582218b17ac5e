"""Structured logs: JSON lines (or plain text), request and connection ids, secrets redacted.

`setup_logging(settings)` runs in the app's lifespan. `LogContextMiddleware` names every HTTP
request (`request_id`, echoed as `x-request-id`) and WebSocket connection (`connection_id`),
logs one line per request and a connect and a close line per connection. Every record logged
while it runs carries those ids, whichever task logs it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.logging import AccessFormatter, DefaultFormatter

from app.config import Settings

HANDLER_NAME = "livepost"
REQUEST_ID_HEADER = b"x-request-id"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,64}")

# Fields of the current request or connection (request_id or connection_id, user_id). A dict,
# so a field bound inside the endpoint is seen by the middleware and by tasks the endpoint
# started (they copy the context, which holds the same dict).
_context: ContextVar[dict[str, Any] | None] = ContextVar("livepost_log_context", default=None)

access_log = logging.getLogger("app.access")

# uvicorn's own shutdown (Ctrl-C, a second SIGTERM, an expired graceful stop) closes every
# socket with 1012 itself and tells the app through a `websocket.disconnect` with that code.
# 1012 "Service Restart" is a server's code (RFC 6455's registry), so such a disconnect was
# the server's close, not the client's.
SERVICE_RESTART = 1012


def disconnect_close(message: Message) -> tuple[int, str]:
    """The close code of a `websocket.disconnect` and who closed: "client" or "server"."""
    code = int(message.get("code", 1005))
    return code, "server" if code == SERVICE_RESTART else "client"


# ---------------------------------------------------------------------------------------------
# Redaction

_SECRET_VALUE = re.compile(
    r"""(?ix)
    (   # the name: a query parameter, a header, a dict or JSON key, a keyword argument
        (?:\b[a-z_]*(?:token|secret|passw(?:or)?d)|\bauthorization|\bcookie|\bapi[_-]?key)
        (?:["']?\s*[:=]\s*|["']\s*,\s*)     # token=..., "password": ..., ('authorization', ...
    )
    (?: \[redacted\]                           # already done
      | b?"[^"]*" | b?'[^']*'                    # a quoted value, spaces and all
      | (?:bearer|basic)\s+[^\s&,;)}\]"']+     # an Authorization scheme and its credentials
      | [^\s&,;)}\]"']+ )                       # a bare value
    """
)
_JWT = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*")


def redact(text: str) -> str:
    """Mask token, password, secret, Authorization and Cookie values and anything JWT-shaped."""
    return _JWT.sub("[redacted]", _SECRET_VALUE.sub(r"\1[redacted]", text))


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    clean = redact(text)
    return value if clean == text else clean


class SecretFilter(logging.Filter):
    """Redacts a record's message and arguments in place (keeping their number: uvicorn's
    access formatter unpacks them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _redact_value(arg) for key, arg in record.args.items()}
        color = record.__dict__.get("color_message")
        if isinstance(color, str):
            record.__dict__["color_message"] = redact(color)
        return True


_SECRETS = SecretFilter()

# ---------------------------------------------------------------------------------------------
# Formatters

# One attribute, not one per field: `extra=` may not name an attribute the record already has.
CONTEXT_ATTRIBUTE = "log_context"
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_HIDDEN = {"color_message", CONTEXT_ATTRIBUTE}  # color_message: uvicorn's coloured duplicate


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context (request or connection) and `extra=` fields."""
    fields = dict(record.__dict__.get(CONTEXT_ATTRIBUTE) or {})
    fields.update(
        (key, value)
        for key, value in record.__dict__.items()
        if key not in _STANDARD and key not in _HIDDEN
    )
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then context and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        return redact(f"{line} {fields}" if fields else line)


def formatter_for(log_format: str) -> logging.Formatter:
    """JSON lines for "json", plain text for anything else."""
    return JsonFormatter() if log_format.lower() == "json" else TextFormatter()


# ---------------------------------------------------------------------------------------------
# Setup


def setup_logging(settings: Settings) -> None:
    """Send the process's logs to stderr in `settings.log_format`; safe to call again."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter_for(settings.log_format))
    handler.addFilter(_SECRETS)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    _install_context_factory()
    # Neither format shows where a call was made: without this, every record walks the stack
    # (the logging docs' "Optimization" section), and a coroutine that logs keeps the frame
    # objects that walk created for as long as it lives (each idle WebSocket's does).
    logging._srcfile = None  # type: ignore[attr-defined]
    # uvicorn logs request lines with their query string (`/ws?token=...`) on these loggers,
    # which do not propagate to the root: filter them where the records are made.
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        if _SECRETS not in logger.filters:
            logger.addFilter(_SECRETS)
    if isinstance(handler.formatter, JsonFormatter):
        # uvicorn's default text handlers join the JSON stream; a --log-config of the
        # operator's own (other formatter classes) is left as it is.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            for uvicorn_handler in logging.getLogger(name).handlers:
                if isinstance(uvicorn_handler.formatter, DefaultFormatter | AccessFormatter):
                    uvicorn_handler.setFormatter(handler.formatter)


def _install_context_factory() -> None:
    """Stamp the current request or connection fields on every record when it is made, so
    any handler (and a test's log capture) sees them."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "livepost_context", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = _context.get()
        if fields:
            record.__dict__[CONTEXT_ATTRIBUTE] = dict(fields)
        return record

    factory.livepost_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def bind_log_fields(**fields: Any) -> None:
    """Add fields (e.g. user_id) to every later record of the current request or connection."""
    current = _context.get()
    if current is None:
        _context.set(dict(fields))
    else:
        current.update(fields)


def new_id() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------------------------
# Middleware


class LogContextMiddleware:
    """Pure ASGI: names each HTTP request and WebSocket connection and logs it (no query
    strings: they may hold tokens). Cheap: one context variable and one record per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _incoming_request_id(scope) or new_id()
        token = _context.set({"request_id": request_id})
        started = time.perf_counter()
        status = 500  # if the app fails before answering, the server answers 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != REQUEST_ID_HEADER
                ]
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                duration_ms,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": duration_ms,
                    "client": _client(scope),
                },
            )
            _context.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _context.set({"connection_id": new_id()})
        started = time.perf_counter()
        accepted = False
        close_code: int | None = None
        closed_by: str | None = None
        where = {"path": scope["path"], "client": _client(scope)}

        async def observed_receive() -> Message:
            nonlocal close_code, closed_by
            message = await receive()
            if message["type"] == "websocket.disconnect" and closed_by is None:
                close_code, closed_by = disconnect_close(message)
            return message

        async def observed_send(message: Message) -> None:
            nonlocal accepted, close_code, closed_by
            if message["type"] == "websocket.accept":
                accepted = True
                access_log.info("websocket connected", extra=where)
            elif message["type"] == "websocket.close" and closed_by is None:
                close_code, closed_by = message.get("code", 1000), "server"
            await send(message)

        try:
            await self.app(scope, observed_receive, observed_send)
        finally:
            fields = where | {
                "close_code": close_code,
                "closed_by": closed_by,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            }
            if accepted:
                access_log.info("websocket closed (%s)", close_code, extra=fields)
            else:  # closed before accept: uvicorn answers the handshake with HTTP 403
                access_log.info("websocket rejected (%s)", close_code, extra=fields)
            _context.reset(token)


def _incoming_request_id(scope: Scope) -> str | None:
    """A caller's or proxy's X-Request-ID, if it is a short token safe to log and echo."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            return candidate if _SAFE_REQUEST_ID.fullmatch(candidate) else None
    return None


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None
