"""Protocol fuzzing of `GET /ws` (PROTOCOL.md, "WebSocket"): hypothesis generates messages and
the live server must answer every one with a well-formed reply, keep the connection open and
keep serving everybody else.

What is generated: requests for every action (and unknown ones, and non-string ones) with every
parameter (pk, data, body, hashtag, limit, before, body_contains, token, since, request_id)
given plausible values and wrong ones (every JSON type, integers far beyond 64 bits, floats,
text over all of unicode including NUL and lone surrogates, nesting thousands deep, numbers
thousands of digits long), bare and in the `{"stream", "payload"}` wrapping; JSON that is not an
object; text that is not JSON; binary frames. Lone surrogates travel as `\\udXXX` escapes
(`json.dumps(ensure_ascii=True)`), the only way to send them in valid UTF-8.

Each hypothesis example is a batch, pipelined over an authenticated connection and an anonymous
one at once; exactly one reply per message is read back, in order (events the fuzzed
connection subscribed itself to are told apart and checked as events). Every reply must parse,
have exactly DCRF's five keys (or be the wrapping of them), carry an int status below 500, an
errors list, echo `action` and `request_id`, and the connection must stay open. Meanwhile a
bystander on a third connection writes a tagged post and receives its reply and its event in
every batch. After every batch no database connection is left checked out of the server's pool
and (PostgreSQL) no session is left idle in a transaction; after the fuzz the fuzzed connection
still creates, updates, deletes and lists, and the bystander's post is untouched.

Invalid UTF-8 in a text frame cannot keep the connection (RFC 6455: close with 1007); that is
tested on its own, with a fresh connection afterwards.

The normal suite sends LIVEPOST_FUZZ_MESSAGES (default 3000) messages per stack. The long run
(the issue's 100,000 messages per stack, on SQLite and PostgreSQL, with both brokers; the
PostgreSQL database is wiped by the test fixtures, so give it a scratch one):

    LIVEPOST_FUZZ_MESSAGES=100000 \\
    LIVEPOST_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/livepost_test \\
    LIVEPOST_TEST_REDIS_URL=redis://127.0.0.1:6379/0 \\
    .venv/bin/pytest tests/test_fuzz_ws.py -s -p no:cacheprovider

`-s` prints the count of messages sent per stack. A failure names each message (as sent) that
got a bad answer. LIVEPOST_FUZZ_KEEP_GOING=1 collects bad replies over the whole run and
reports every distinct one at the end (in test_after_the_fuzz_everything_still_works) instead
of stopping at the first batch that has one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from websockets.exceptions import ConnectionClosed

from app.security import issue_token
from tests.support import TIMEOUT, Stack, User, WsClient, event, post_json, subscribe, unique

TOTAL_MESSAGES = int(os.environ.get("LIVEPOST_FUZZ_MESSAGES", "3000"))
BATCH = 25  # messages per hypothesis example, sent on each of the two fuzzed connections
EXAMPLES = max(1, math.ceil(TOTAL_MESSAGES / (2 * BATCH)))
# Collect bad replies over the whole run and report them at the end instead of failing the
# first batch that has one (to see every distinct failure of a long run at once).
KEEP_GOING = os.environ.get("LIVEPOST_FUZZ_KEEP_GOING") == "1"
MAX_FRAME = 56_000  # below the server's frame limit (64 KiB): size is not what is fuzzed here

REPLY_KEYS = {"errors", "data", "action", "response_status", "request_id"}
EVENT_KEYS = {"action", "pk", "data", "offset", "safe", "request_id"}
ACTIONS = {
    "list": 200,
    "retrieve": 200,
    "create": 201,
    "update": 200,
    "patch": 200,
    "delete": 204,
    "subscribe_to_hashtag": 201,
    "unsubscribe_from_hashtag": 204,
    "authenticate": 200,
}
ANONYMOUS_ACTIONS = {"list", "retrieve", "authenticate"}
POST_ACTIONS = {"retrieve", "create", "update", "patch"}
PARAMS = [
    "pk",
    "data",
    "body",
    "hashtag",
    "limit",
    "before",
    "body_contains",
    "token",
    "since",
    "request_id",
]


# --- message model -------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text spliced verbatim into a message (too deep or too long for json.dumps)."""

    text: str


@dataclass(frozen=True)
class Ref:
    """A value known only on the live stack (a token, an existing pk), filled in when sent."""

    name: str


@dataclass(frozen=True)
class Message:
    """One frame to send: `json` (a value, possibly holding Raw and Ref), `text` or `binary`."""

    kind: str
    value: Any

    def __repr__(self) -> str:  # hypothesis prints failing batches with this
        shown = repr(self.value)
        if len(shown) > 600:
            shown = f"{shown[:300]}...<{len(shown)} characters>...{shown[-200:]}"
        return f"{self.kind}:{shown}"


class Unknown(Exception):
    """The message holds raw text: what the server parses from it is not modelled."""


def encode(value: Any, refs: dict[str, Any]) -> str:
    """JSON text of value; ensure_ascii, so lone surrogates and NUL travel as escapes."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Ref):
        return json.dumps(refs[value.name])
    if isinstance(value, dict):
        items = (json.dumps(key) + ":" + encode(item, refs) for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(item, refs) for item in value) + "]"
    return json.dumps(value, allow_nan=False)


def resolve(value: Any, refs: dict[str, Any]) -> Any:
    """The value the server decodes from encode(value); Unknown when raw text is inside."""
    if isinstance(value, Raw):
        raise Unknown
    if isinstance(value, Ref):
        return refs[value.name]
    if isinstance(value, dict):
        return {key: resolve(item, refs) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, refs) for item in value]
    return value


def frame_of(message: Message, refs: dict[str, Any]) -> str | bytes:
    if message.kind == "json":
        return encode(message.value, refs)
    return message.value  # type: ignore[no-any-return]


def canonical(value: Any) -> str:
    """Compare JSON values exactly: 1 is not true, -0.0 is not 0."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


# --- strategies ----------------------------------------------------------------------------

HUGE_INTS = [
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    2**200,
    -(2**200),
    10**30,
    10**300,
]
SPECIAL_STRINGS = [
    "",
    " ",
    "\t\n\r ",
    "\x00",
    "a\x00b",
    "#\x00",
    "\ud800",
    "\udfff",
    "\ud83d",
    "x\udc00y",
    "\ud83d\ude00",
    "\U0010ffff",
    "\ufffe",
    "\ufeff",
    "\u202e#evil",
    "\u0301",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: isdecimal(), not ASCII
    "\u00b2",  # SUPERSCRIPT TWO: isdigit(), not decimal
    "1",
    " 1 ",
    "+1",
    "-1",
    "0",
    "1.0",
    "1.5",
    "1e3",
    "0x1",
    "9" * 30,
    "null",
    "true",
    "[]",
    "{}",
    "%",
    "_",
    "\\",
    "%_\\",
    "'; DROP TABLE posts; --",
    "#python",
    "#Python #c++ #python3.10",
    "#" * 300,
    "x" * 256,
    "x" * 257,
    " " + "x" * 256 + " ",
    "\u00e9" * 256,
    "\U0001f600" * 256,
    "\U0001f600" * 257,
]
ACTION_NAMES = list(ACTIONS)
UNKNOWN_ACTIONS = [
    "",
    " list",
    "list ",
    "LIST",
    "Create",
    "destroy",
    "subscribe",
    "unsubscribe",
    "__class__",
    "__init__",
    "_answer",
    "authenticate\x00",
    "list\x00",
    "\ud800",
    "\u0441\u043f\u0438\u0441\u043e\u043a",
]

ints = st.one_of(st.integers(), st.sampled_from(HUGE_INTS), st.integers(-5, 600))
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.0, 500.0, 501.0, 1e308, 5e-324, 2.0**64]),
)
texts = st.one_of(
    st.text(st.characters(), max_size=20),  # every code point, surrogates and NUL included
    st.text(max_size=300),
    st.sampled_from(SPECIAL_STRINGS),
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
keys = st.one_of(st.sampled_from([*PARAMS, "action", "stream", "payload"]), st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=10,
)


def _deep(kind: str, depth: int) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    if kind == "list1":
        return Raw("[" * depth + "1" + "]" * depth)
    if kind == "dict":
        return Raw('{"a":' * depth + "0" + "}" * depth)
    return Raw('[{"a":' * depth + "0" + "}]" * depth)


deep_values = st.builds(
    _deep,
    st.sampled_from(["list", "list1", "dict", "mixed"]),
    # Around 1000 is where parsers give up (orjson at 1024, the stdlib at its recursion limit).
    st.one_of(st.integers(2, 3000), st.integers(900, 1100), st.sampled_from([254, 255, 256])),
)
raw_numbers = st.one_of(
    st.integers(19, 6000).map(lambda digits: Raw("9" * digits)),
    st.integers(19, 400).map(lambda digits: Raw("-" + "1" * digits)),
    st.sampled_from(
        [
            Raw("1e999"),
            Raw("-1e999"),
            Raw("1E-999"),
            Raw("-0"),
            Raw("1.0e+2"),
            Raw("0." + "0" * 400 + "1"),
            Raw("1" + "0" * 400 + ".0"),
            Raw("123456789012345678901234567890e-10"),
        ]
    ),
)
wrong_values = st.one_of(json_values, scalars, deep_values, raw_numbers)

TOKEN_REFS = ["expired_token", "ghost_token", "huge_sub_token", "forged_token", "alg_none_token"]
tokens = st.one_of(
    st.sampled_from([Ref(name) for name in TOKEN_REFS]),
    texts,
    st.sampled_from(["a.b.c", "Bearer x", "e30.e30.", "x" * 5000]),
)
pks = st.one_of(
    st.sampled_from([Ref("own_pk"), Ref("own_pk2"), Ref("their_pk")]),
    ints,
    st.sampled_from(["1", " 1 ", "01", "1.0", "+1", "-1", "\u0663", "\u00b2", "9" * 30]),
)
# A few tags shared by bodies and subscriptions, so the fuzzed connection also gets events.
FEW_TAGS = ["a", "b", "x1", "python"]
bodies = st.one_of(
    texts,
    st.builds(lambda tag, text_: f"{text_} #{tag}", st.sampled_from(FEW_TAGS), texts),
    st.builds(
        lambda tags: " ".join(f"#{tag}" for tag in tags), st.lists(st.sampled_from(FEW_TAGS))
    ),
)
hashtags = st.one_of(
    st.sampled_from(FEW_TAGS),
    st.sampled_from(FEW_TAGS).map(lambda tag: f"#{tag.upper()}"),
    st.from_regex(r"#?[A-Za-z0-9]{1,3}", fullmatch=True),
    st.from_regex(r"#?[a-z0-9]{60,110}", fullmatch=True),
    texts,
)
limits = st.one_of(st.integers(-2, 502), st.sampled_from(["1", " 7 ", "500", "501", "0"]))
plausible: dict[str, st.SearchStrategy[Any]] = {
    "pk": pks,
    "data": st.one_of(
        st.fixed_dictionaries({"body": bodies}),
        st.fixed_dictionaries({"body": bodies}, optional={"limit": limits, "pk": pks}),
        st.dictionaries(keys, wrong_values, max_size=3),
        st.just({}),
    ),
    "body": bodies,
    "hashtag": hashtags,
    "limit": limits,
    "before": st.one_of(pks, limits),
    "body_contains": texts,
    "token": tokens,
    "since": ints,
    "request_id": st.one_of(ints, texts, json_values),
}
action_values = st.one_of(
    st.sampled_from(ACTION_NAMES),
    st.sampled_from(ACTION_NAMES),
    st.sampled_from(UNKNOWN_ACTIONS),
    wrong_values,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """{"action", ...params}: each parameter absent, plausible or of a wrong type."""
    request: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        request["action"] = draw(action_values)
    for name in draw(st.lists(st.sampled_from(PARAMS), unique=True, max_size=5)):
        request[name] = draw(plausible[name] if draw(st.booleans()) else wrong_values)
    return request


# The parameters each action reads.
ACTION_PARAMS = {
    "list": ["body_contains", "limit", "before", "data"],
    "retrieve": ["pk"],
    "create": ["data"],
    "update": ["pk", "data"],
    "patch": ["pk", "data"],
    "delete": ["pk"],
    "subscribe_to_hashtag": ["hashtag"],
    "unsubscribe_from_hashtag": ["hashtag"],
    "authenticate": ["token"],
}


@st.composite
def action_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A known action with its own parameters, mostly plausible, sometimes wrong or absent."""
    action = draw(st.sampled_from(ACTION_NAMES))
    request: dict[str, Any] = {"action": action}
    for name in ACTION_PARAMS[action]:
        choice = draw(st.integers(0, 9))
        if choice < 7:
            request[name] = draw(plausible[name])
        elif choice < 9:
            request[name] = draw(wrong_values)
    if draw(st.booleans()):
        request["request_id"] = draw(plausible["request_id"])
    for name in draw(st.lists(st.sampled_from(PARAMS), unique=True, max_size=2)):
        request.setdefault(name, draw(wrong_values))
    return request


# Writes on the fuzzer's own posts (so past the 404): valid, or failing validation inside the
# write's transaction, which must roll back cleanly.
own_writes = st.one_of(
    st.fixed_dictionaries({"action": st.just("create"), "data": plausible["data"]}),
    st.fixed_dictionaries(
        {
            "action": st.sampled_from(["update", "patch"]),
            "pk": st.sampled_from([Ref("own_pk"), Ref("own_pk2")]),
            "data": st.one_of(st.fixed_dictionaries({"body": bodies}), plausible["data"]),
        }
    ),
    st.fixed_dictionaries(
        {"action": st.just("delete"), "pk": st.sampled_from([Ref("own_pk"), Ref("own_pk2")])}
    ),
)

streams = st.one_of(
    st.just("posts"), st.just("posts"), st.sampled_from(["", "Posts", "x"]), scalars
)
wrapped_requests = st.one_of(
    st.builds(lambda stream, payload: {"stream": stream, "payload": payload}, streams, requests()),
    st.builds(
        lambda stream, payload: {"stream": stream, "payload": payload}, streams, action_requests()
    ),
    st.builds(
        lambda stream, payload: {"stream": stream, "payload": payload}, streams, wrong_values
    ),
    st.builds(lambda stream: {"stream": stream}, streams),
)


def _valid_json(message: dict[str, Any]) -> str:
    return encode(message, {name: 1 for name in ("own_pk", "own_pk2", "their_pk", *TOKEN_REFS)})


GARBAGE = [
    "",
    " ",
    "\x00",
    "{",
    "}",
    "[",
    '{"action":',
    '{"action": "list"',
    "{'action': 'list'}",
    '{"action": "list",}',
    "[1,]",
    "NaN",
    "Infinity",
    "-Infinity",
    '{"action": "list", "limit": NaN}',
    '{"action": "list", "request_id": Infinity}',
    '{"action": "list"}\x00',
    '{"action": "list"} {"action": "list"}',
    '{"action": "list", "action": "create", "data": {"body": "dup keys"}}',
    '{"stream": "posts", "stream": 1, "payload": {}}',
    '\ufeff{"action": "list"}',
    '{"action": "list", "request_id": "\\ud800"}',
    '{"action": "list", "request_id": "\\udfff\\ud800"}',
    '{"action": "list", "request_id": "\\u0000"}',
    '{"action": "list", "request_id": "\\x00"}',
    '{"action": "list", "request_id": "\\u12"}',
    '{"action": "li\\u0000st"}',
    '{"\\ud800": 1, "action": "list"}',
    '"\\ud800"',
    "9" * 5000,
    "-" + "9" * 5000,
    '{"action": "list", "request_id": ' + "9" * 5000 + "}",
    '{"action": "list", "request_id": ' + "9" * 4000 + "}",
    "[" * 5000 + "]" * 5000,
    '{"a":' * 5000 + "1" + "}" * 5000,
    "[" * 20000,
    '{"action": "list", "request_id": ' + "[" * 5000 + "]" * 5000 + "}",
]
garbage_texts = st.one_of(
    st.sampled_from(GARBAGE),
    st.text(st.characters(codec="utf-8"), max_size=60),  # a text frame must be valid UTF-8
    st.builds(
        lambda request, cut: _valid_json(request)[:cut], requests(), st.integers(0, 40)
    ),  # truncated requests
)
binaries = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"", b'{"action": "list"}', b"\xff\xfe\x00", "\u00e9".encode("latin-1")]),
)


def _small_enough(message: Message) -> bool:
    if message.kind != "json":
        return True
    refs = {name: "t" * 200 for name in ("own_pk", "own_pk2", "their_pk", *TOKEN_REFS)}
    return len(encode(message.value, refs).encode()) < MAX_FRAME


messages = st.one_of(
    requests().map(lambda value: Message("json", value)),
    requests().map(lambda value: Message("json", value)),
    action_requests().map(lambda value: Message("json", value)),
    action_requests().map(lambda value: Message("json", value)),
    action_requests().map(lambda value: Message("json", value)),
    own_writes.map(lambda value: Message("json", value)),
    own_writes.map(lambda value: Message("json", value)),
    wrapped_requests.map(lambda value: Message("json", value)),
    wrong_values.map(lambda value: Message("json", value)),
    garbage_texts.map(lambda value: Message("text", value)),
    binaries.map(lambda value: Message("binary", value)),
).filter(_small_enough)


# --- the arena: a fuzzed authenticated connection, a fuzzed anonymous one, a bystander -------


@dataclass
class Arena:
    stack: Stack
    fuzzer: User
    watcher: User
    auth: WsClient
    anon: WsClient
    bystander: WsClient
    tag: str
    their_post: dict[str, Any]
    refs: dict[str, Any]
    sent: int = 0
    events: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    rounds: int = 0
    violations: list[str] = field(default_factory=list)
    own_pks: list[int] = field(default_factory=list)
    probe: AsyncEngine | None = None  # PostgreSQL: looks at pg_stat_activity

    def aim(self) -> None:
        """Point the own-pk refs at the fuzzer's newest post and one from the middle."""
        if self.own_pks:
            self.refs["own_pk"] = self.own_pks[-1]
            self.refs["own_pk2"] = self.own_pks[len(self.own_pks) // 2]

    def report(self) -> None:
        """Fail with every bad reply collected so far (each different one once)."""
        if not self.violations:
            return
        distinct = list(dict.fromkeys(self.violations))
        self.violations.clear()
        shown = "\n\n".join(distinct[:20])
        pytest.fail(f"{len(distinct)} bad replies:\n\n{shown}", pytrace=False)


def _forged_tokens(user: User, secret: str) -> dict[str, str]:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    claims = json.dumps({"sub": str(user.id), "exp": 2**40}).encode()
    payload = base64.urlsafe_b64encode(claims).rstrip(b"=").decode()
    return {
        "expired_token": issue_token(user.id, secret, -60),
        "ghost_token": issue_token(2**62, secret, 3600),
        "huge_sub_token": issue_token(2**70, secret, 3600),
        "forged_token": issue_token(user.id, "not-the-secret-" + "z" * 32, 3600),
        "alg_none_token": f"{header}.{payload}.",
    }


@pytest.fixture(scope="module")
async def arena(stack: Stack) -> AsyncIterator[Arena]:
    fuzzer, watcher = await stack.user(), await stack.user()
    auth, anon = await stack.connect(fuzzer), await stack.connect()
    bystander = await stack.connect(watcher)
    tag = unique("by")
    await subscribe(bystander, tag, "bystander")
    their = await bystander.ask({"action": "create", "data": {"body": "the watcher's own post"}})
    own = [
        (await auth.ask({"action": "create", "data": {"body": f"fuzz target {n}"}}))["data"]
        for n in range(2)
    ]
    for few in FEW_TAGS:  # the fuzz's own writes then raise events on the fuzzed connection
        await subscribe(auth, few, "fuzz")
    assert stack.settings.jwt_secret is not None
    refs: dict[str, Any] = {
        "own_pk": own[0]["pk"],
        "own_pk2": own[1]["pk"],
        "their_pk": their["data"]["pk"],
        **_forged_tokens(fuzzer, stack.settings.jwt_secret),
    }
    arena = Arena(stack, fuzzer, watcher, auth, anon, bystander, tag, their["data"], refs)
    if stack.name.startswith("postgres"):
        arena.probe = create_async_engine(stack.settings.database_url, pool_size=1)
    yield arena
    for client in (arena.auth, arena.anon, bystander):
        await client.close()
    if arena.probe is not None:
        await arena.probe.dispose()


# --- checking replies ----------------------------------------------------------------------


def _expectation(message: Message, refs: dict[str, Any]) -> dict[str, Any] | None:
    """What the spec fixes about the reply to message: framing, echoes, anonymous 403, 405.

    None when the message holds raw text whose decoding is not modelled (then only the
    shape is checked)."""
    bare_400 = {"wrapped": False, "action": None, "request_id": None, "status": {400}}
    if message.kind == "binary":
        return bare_400
    if message.kind == "text":
        return None
    try:
        resolve(message.value, refs)
    except Unknown:
        return None
    # What a correct parser reads (an escaped surrogate pair is one astral character).
    value = json.loads(encode(message.value, refs))
    if not isinstance(value, dict):
        return bare_400
    if "stream" in value and "action" not in value:
        stream, payload = value["stream"], value.get("payload")
        expected: dict[str, Any] = {"wrapped": True, "stream": stream}
        if not isinstance(payload, dict):
            return expected | {"action": None, "request_id": None, "status": {400, 404}}
        expected |= _request_expectation(payload)
        if stream != "posts":
            expected["status"] = {404}
        return expected
    return {"wrapped": False} | _request_expectation(value)


def _request_expectation(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "action": request.get("action"),
        "request_id": request.get("request_id"),
        "has_action": "action" in request,
        "status": None,
    }


def _check_event(event: Any, where: str) -> None:
    assert isinstance(event, dict), where
    assert set(event) == EVENT_KEYS, where
    assert event["action"] in {"create", "update", "delete"}, where
    assert isinstance(event["pk"], int), where
    assert type(event["offset"]) is int and event["offset"] > 0, where
    if event["action"] == "delete":
        assert event["data"] == {"pk": event["pk"]}, where
    else:
        post_json(event["data"])


def _check_reply(arena: Arena, frame: Any, message: Message, anonymous: bool, where: str) -> None:
    expected = _expectation(message, arena.refs)
    stream = None
    if isinstance(frame, dict) and set(frame) == {"stream", "payload"}:
        stream, frame = frame["stream"], frame["payload"]
        assert stream is not None, where
    assert isinstance(frame, dict) and set(frame) == REPLY_KEYS, where
    status = frame["response_status"]
    assert type(status) is int, where
    arena.statuses[status] = arena.statuses.get(status, 0) + 1
    assert status < 500, where
    assert status in (200, 201, 204) or 400 <= status < 500, where
    assert isinstance(frame["errors"], list), where
    if status >= 400:
        assert frame["errors"] and frame["data"] is None, where
    else:
        assert frame["errors"] == [], where
    if expected is None:
        return
    if not expected["wrapped"]:
        assert stream is None, f"bare request answered wrapped\n{where}"
    else:
        assert stream is not None, f"wrapped request answered bare\n{where}"
        if isinstance(expected["stream"], str):
            assert stream == expected["stream"], where
    assert canonical(frame["action"]) == canonical(expected["action"]), where
    assert canonical(frame["request_id"]) == canonical(expected["request_id"]), where
    action = expected["action"]
    if expected["status"] is not None:
        assert status in expected["status"], where
    elif not expected["has_action"]:
        assert status == 405, where
    elif anonymous and not (isinstance(action, str) and action in ANONYMOUS_ACTIONS):
        assert status == 403, where
        assert frame["errors"] == ["You do not have permission to perform this action."], where
    elif not (isinstance(action, str) and action in ACTIONS):
        assert status == 405, where
    elif status < 400:
        assert status == ACTIONS[action], where
        if action == "list":
            assert isinstance(frame["data"], list), where
            for post in frame["data"]:
                post_json(post)
        elif action in POST_ACTIONS:
            post_json(frame["data"])
        elif action == "subscribe_to_hashtag":
            # The log's current offset, the watermark, and whether a resume ("since") was
            # honoured.
            data = frame["data"]
            assert isinstance(data, dict), where
            assert set(data) in ({"offset", "safe"}, {"offset", "safe", "recovered"}), where
            assert type(data["offset"]) is int and data["offset"] >= 0, where
            assert type(data["safe"]) is int and 0 <= data["safe"] <= data["offset"], where
            assert type(data.get("recovered", False)) is bool, where
        elif action == "unsubscribe_from_hashtag":
            assert frame["data"] == {}, where


async def _answers(
    arena: Arena, client: WsClient, batch: list[Message], anonymous: bool, sent: asyncio.Event
) -> None:
    """Read exactly one reply per message of batch (and any events in between), in order."""
    name = "anonymous" if anonymous else "authenticated"
    index = 0
    while index < len(batch):
        message = batch[index]
        where = f"{name} connection, message {index} of the batch: {message!r}"
        try:
            async with asyncio.timeout(TIMEOUT):
                raw = await client.connection.recv()
        except TimeoutError:
            pytest.fail(f"no reply within {TIMEOUT}s (sent: {sent.is_set()})\n{where}")
        except ConnectionClosed as closed:
            pytest.fail(f"the server closed the connection ({closed!r})\n{where}")
        assert isinstance(raw, str), f"binary frame from the server\n{where}"
        try:
            frame = json.loads(raw)
        except ValueError:
            pytest.fail(f"reply is not JSON: {raw[:500]!r}\n{where}")
        payload = frame.get("payload") if isinstance(frame, dict) and "stream" in frame else frame
        if isinstance(payload, dict) and "response_status" not in payload:
            _check_event(payload, f"not a reply and not an event: {raw[:500]!r}\n{where}")
            arena.events += 1
            continue
        try:
            _check_reply(arena, frame, message, anonymous, f"reply {raw[:500]!r}\n{where}")
        except AssertionError as error:
            arena.violations.append(str(error))
        if (
            not anonymous
            and isinstance(payload, dict)
            and payload.get("action") == "create"
            and payload.get("response_status") == 201
        ):
            arena.own_pks.append(payload["data"]["pk"])
        index += 1


async def _send_all(client: WsClient, batch: list[Message], refs: dict[str, Any]) -> None:
    for message in batch:
        await client.connection.send(frame_of(message, refs))


async def _fuzz(arena: Arena, client: WsClient, batch: list[Message], anonymous: bool) -> None:
    """Pipeline the batch while reading its replies, so the server never waits on us."""
    sent = asyncio.Event()

    async def send() -> None:
        await _send_all(client, batch, arena.refs)
        sent.set()

    await asyncio.gather(send(), _answers(arena, client, batch, anonymous, sent))
    arena.sent += len(batch)


async def bystander_round(arena: Arena) -> None:
    """A normal client on its own connection: write a tagged post, get the reply, then the event."""
    arena.rounds += 1
    body = f"#{arena.tag} round {arena.rounds}"
    reply = await arena.bystander.ask(
        {"action": "create", "data": {"body": body}, "request_id": arena.rounds}
    )
    assert reply["response_status"] == 201, reply
    post = post_json(reply["data"])
    assert post["body"] == body and post["author"] == arena.watcher.id
    received = await arena.bystander.recv()
    assert received == event("create", post["pk"], post, "bystander")
    listed = await arena.bystander.ask({"action": "list", "body_contains": body, "limit": 1})
    assert listed["response_status"] == 200 and listed["data"] == [post], listed


async def _reopen_if_closed(arena: Arena) -> None:
    """A failed example may have lost a connection: later examples get fresh ones."""
    if arena.auth.connection.close_code is not None:
        arena.auth = await arena.stack.connect(arena.fuzzer)
    if arena.anon.connection.close_code is not None:
        arena.anon = await arena.stack.connect()


# --- the tests -----------------------------------------------------------------------------


def _json(value: Any) -> Message:
    return Message("json", value)


# Known-nasty inputs, run before anything generated.
NASTY = [
    _json({"action": []}),
    _json({"action": {}}),
    _json({"action": [1, [2]], "request_id": 1}),
    _json({"action": _deep("list", 990)}),
    _json({"action": _deep("list", 1010)}),
    _json({"action": _deep("dict", 1000)}),
    _json({"action": "list", "request_id": _deep("list", 1000)}),
    _json({"action": "list", "request_id": _deep("list", 300)}),
    _json({"action": "list", "request_id": 2**200}),
    _json({"action": "list", "request_id": -(2**63) - 1}),  # 19 digits, beyond int64
    _json({"action": "list", "request_id": [2**64, -(2**64), 2**63, -(2**63)]}),
    _json({"action": "list", "request_id": Raw("9" * 5000)}),
    _json({"action": "list", "body_contains": "\x00"}),
    _json({"action": "list", "body_contains": "\ud800"}),
    _json({"action": "list", "body_contains": "x" * 10_000}),
    _json({"action": "list", "limit": 2**200, "before": -(2**200)}),
    _json({"action": "list", "before": 2**200}),
    _json({"action": "list", "before": 1e308}),
    _json({"action": "retrieve", "pk": 2**63}),
    _json({"action": "retrieve", "pk": "\u0663"}),
    _json({"action": "retrieve", "pk": 1.0}),
    _json({"action": "create", "data": {"body": "\x00"}}),
    _json({"action": "create", "data": {"body": "a\ud800b"}}),
    _json({"action": "create", "data": {"body": "\U0001f600" * 257}}),
    _json({"action": "update", "pk": Ref("own_pk"), "data": {"body": "nul \x00"}}),
    _json({"action": "patch", "pk": Ref("own_pk"), "data": {"body": "\udfff"}}),
    _json({"action": "patch", "pk": Ref("their_pk"), "data": {"body": "mine now"}}),
    _json({"action": "delete", "pk": Ref("their_pk")}),
    _json({"action": "subscribe_to_hashtag", "hashtag": "\x00"}),
    _json({"action": "subscribe_to_hashtag", "hashtag": "#" + "a" * 5000}),
    _json({"action": "unsubscribe_from_hashtag", "hashtag": ["python"]}),
    _json({"action": "authenticate", "token": Ref("alg_none_token")}),
    _json({"action": "authenticate", "token": Ref("ghost_token")}),
    _json({"action": "authenticate", "token": Ref("huge_sub_token")}),
    _json({"action": "authenticate", "token": "\ud800"}),
    _json({"action": "authenticate", "token": "x" * 5000}),
    _json({"stream": "posts", "payload": {"action": []}}),
    _json({"stream": [], "payload": {"action": "list"}}),
    _json({"stream": _deep("list", 1000), "payload": {"action": "list"}}),
    _json({"stream": None, "payload": None}),
    Message("text", '{"action": "list", "request_id": ' + "[" * 5000 + "]" * 5000 + "}"),
    Message("text", '{"action": ' + "[" * 1000 + "]" * 1000 + "}"),
    Message("text", "[" * 5000 + "]" * 5000),
    Message("binary", b""),
    Message("binary", b'{"action": "list"}'),
]


@pytest.mark.timeout(max(600, TOTAL_MESSAGES // 20))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # No shrinking: the failure names the one message that got the bad answer.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)
@example(batch=NASTY)
@given(batch=st.lists(messages, min_size=BATCH, max_size=BATCH))
async def test_every_message_gets_a_well_formed_reply(arena: Arena, batch: list[Message]) -> None:
    await _reopen_if_closed(arena)
    arena.aim()
    await asyncio.gather(
        _fuzz(arena, arena.auth, batch, anonymous=False),
        _fuzz(arena, arena.anon, batch, anonymous=True),
        bystander_round(arena),
    )
    if not KEEP_GOING:
        arena.report()
    assert arena.auth.connection.close_code is None
    assert arena.anon.connection.close_code is None
    await assert_nothing_left_open(arena)


async def _reply(client: WsClient, request: dict[str, Any]) -> Any:
    """The reply to request, skipping events of subscriptions the fuzz left behind."""
    await client.send(request)
    while True:
        frame = await client.recv()
        payload = frame.get("payload", frame) if "stream" in frame else frame
        if "response_status" in payload:
            return frame


async def _idle_in_transaction(probe: AsyncEngine) -> list[Any]:
    async with probe.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT pid, state, left(query, 200) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state LIKE 'idle in transaction%'"
            )
        )
        return list(rows.all())


async def assert_nothing_left_open(arena: Arena) -> None:
    """With every request answered, no database connection may still be checked out of the
    server's pool and (PostgreSQL) no session may sit idle inside a transaction."""
    engine = arena.stack.server.runtime.engine
    idle: list[Any] = []
    for _ in range(100):  # a reply may leave a moment before its connection is back
        idle = await _idle_in_transaction(arena.probe) if arena.probe is not None else []
        if not engine.pool.checkedout() and not idle:
            return
        await asyncio.sleep(0.01)
    assert engine.pool.checkedout() == 0, engine.pool.status()
    assert idle == []


async def test_after_the_fuzz_everything_still_works(arena: Arena) -> None:
    """No half-open session or transaction, on the fuzzed connection or anywhere else."""
    await _reopen_if_closed(arena)
    marker = unique("after")
    created = await _reply(arena.auth, {"action": "create", "data": {"body": f"{marker} one"}})
    assert created["response_status"] == 201, created
    pk = created["data"]["pk"]
    updated = await _reply(
        arena.auth, {"action": "update", "pk": pk, "data": {"body": f"{marker} two"}}
    )
    assert updated["response_status"] == 200 and updated["data"]["version"] == 2, updated
    listed = await _reply(arena.anon, {"action": "list", "body_contains": marker})
    assert listed["response_status"] == 200 and listed["data"] == [updated["data"]], listed
    deleted = await _reply(arena.auth, {"action": "delete", "pk": pk})
    assert deleted["response_status"] == 204, deleted
    gone = await _reply(arena.anon, {"action": "retrieve", "pk": pk})
    assert gone["response_status"] == 404, gone
    # The fuzzer had the watcher's pk all along and never got to change it.
    theirs = await _reply(arena.anon, {"action": "retrieve", "pk": arena.their_post["pk"]})
    assert theirs["data"] == arena.their_post, theirs
    await bystander_round(arena)
    async with arena.stack.http() as http:
        response = await http.post(
            "/posts", json={"body": f"{marker} rest"}, headers=arena.fuzzer.headers
        )
        assert response.status_code == 201, response.text
    await assert_nothing_left_open(arena)
    print(
        f"\n[ws fuzz {arena.stack.name}] {arena.sent} generated messages sent over 2 fuzzed "
        f"connections ({TOTAL_MESSAGES} asked), {arena.events} events received, "
        f"{arena.rounds} bystander rounds; reply statuses {dict(sorted(arena.statuses.items()))}"
    )
    arena.report()  # what LIVEPOST_FUZZ_KEEP_GOING=1 collected


INVALID_UTF8 = [
    b"\xff\xfe",
    b'{"action": "list", "request_id": "\xc0\x80"}',  # overlong NUL
    b'{"action": "list", "request_id": "\xed\xa0\x80"}',  # an encoded lone surrogate
    b'{"action": "list", "request_id": "\xf4\x90\x80\x80"}',  # beyond U+10FFFF
    b"\xe2\x82",  # truncated sequence
]


@pytest.mark.parametrize("payload", INVALID_UTF8, ids=lambda payload: payload[-6:].hex())
async def test_invalid_utf8_text_frame_closes_1007(live: Stack, payload: bytes) -> None:
    """RFC 6455 8.1: a text frame that is not UTF-8 fails the connection with 1007."""
    user = await live.user()
    client = await live.connect(user)
    await client.connection.send(payload, text=True)  # bytes sent as a text frame, unchecked
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    # The server is still up and the next connection works.
    again = await live.connect(user)
    reply = await again.ask({"action": "create", "data": {"body": "after a 1007"}})
    assert reply["response_status"] == 201, reply
