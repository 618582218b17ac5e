"""Sign-in and registration limits: the limiter on a fake clock, then the REST answers of a
server with tight limits (clients get their own address through X-Forwarded-For, which
uvicorn trusts from loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.accounts.throttle import (
    AccountThrottles,
    LoginThrottle,
    MemoryFailureLimiter,
    retry_after_header,
)
from tests.support import PASSWORD, Endpoint, Server, sqlite_server, unique

SECRET = "throttle-test-secret-" + "t" * 32
WINDOW = 60
REGISTRATION_WINDOW = 3600
LIMITS: dict[str, Any] = {
    "login_failures_per_username": 3,
    "login_failures_per_ip": 5,
    "login_window_seconds": WINDOW,
    "registrations_per_ip": 15,
    "registration_window_seconds": REGISTRATION_WINDOW,
}
WRONG = "not the password"
BAD_CREDENTIALS = {"detail": "Incorrect username or password."}
TOO_MANY_SIGN_INS = {"detail": "Too many failed sign-ins; try again later."}
TOO_MANY_REGISTRATIONS = {"detail": "Too many registrations; try again later."}


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- the limiter -----------------------------------------------------------------------------


def test_a_key_waits_for_its_window_to_end_after_the_limit() -> None:
    clock = FakeClock()
    limiter = MemoryFailureLimiter(3, 60, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("alice") is None
        limiter.record("alice")
        clock.advance(10)
    assert limiter.retry_after("alice") == 30  # the window opened at the first failure
    assert limiter.retry_after("bob") is None  # keys are independent
    clock.advance(29.5)
    assert limiter.retry_after("alice") == 0.5
    clock.advance(0.5)
    assert limiter.retry_after("alice") is None
    limiter.record("alice")  # a new window, counting from one
    assert limiter.retry_after("alice") is None


def test_hit_counts_only_while_under_the_limit() -> None:
    clock = FakeClock()
    limiter = MemoryFailureLimiter(2, 60, clock=clock)
    assert [limiter.hit("10.0.0.1") for _ in range(4)] == [None, None, 60, 60]
    clock.advance(60)
    assert limiter.hit("10.0.0.1") is None


def test_a_refund_gives_an_attempt_back() -> None:
    limiter = MemoryFailureLimiter(1, 60, clock=FakeClock())
    limiter.record("alice")
    assert limiter.retry_after("alice") == 60
    limiter.refund("alice")
    assert limiter.retry_after("alice") is None
    limiter.refund("alice")  # never below zero
    limiter.record("alice")
    assert limiter.retry_after("alice") == 60


def test_expired_keys_are_dropped_by_ordinary_calls() -> None:
    clock = FakeClock()
    limiter = MemoryFailureLimiter(3, 60, clock=clock)
    for index in range(1000):
        limiter.record(f"user{index}")
    assert len(limiter) == 1000
    clock.advance(60)
    assert limiter.retry_after("someone") is None
    assert len(limiter) == 0


def test_memory_stays_bounded_under_a_flood_of_keys() -> None:
    clock = FakeClock()
    limiter = MemoryFailureLimiter(1, 60, clock=clock, max_keys=100)
    for index in range(1000):
        limiter.record(f"user{index}")
    assert len(limiter) == 100
    assert limiter.retry_after("user999") == 60  # the newest windows are the ones kept
    assert limiter.retry_after("user0") is None
    # A made-up username of any length costs no more than a real one.
    limiter.record("x" * 1_000_000)
    assert limiter.retry_after("x" * 1_000_000 + "y") == 60


def test_login_throttle_counts_an_attempt_before_its_password_is_checked() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(
        MemoryFailureLimiter(3, 60, clock=clock), MemoryFailureLimiter(5, 60, clock=clock)
    )
    # Three attempts in flight at once: the fourth waits even though none has failed yet.
    assert [throttle.attempt("alice", "10.0.0.1") for _ in range(4)] == [None, None, None, 60]
    throttle.refund("alice", "10.0.0.1")  # one of them had the right password
    assert throttle.attempt("alice", "10.0.0.1") is None
    # A locked username counts nothing against the address: two more for others, then five.
    assert throttle.attempt("alice", "10.0.0.1") == 60
    assert throttle.attempt("bob", "10.0.0.1") is None
    assert throttle.attempt("carol", "10.0.0.1") is None
    clock.advance(15)
    assert throttle.attempt("dave", "10.0.0.1") == 45
    assert throttle.attempt("dave", "10.0.0.2") is None


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 59.1, 900)] == [
        "1",
        "1",
        "1",
        "60",
        "900",
    ]


# --- over REST -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with sqlite_server(
        tmp_path_factory.mktemp("throttle"),
        uvicorn_options={"proxy_headers": True, "forwarded_allow_ips": "127.0.0.1"},
        jwt_secret=SECRET,
        **LIMITS,
    ) as running:
        yield running


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with Endpoint(f"http://127.0.0.1:{server.port}").http() as client:
        yield client


@pytest.fixture
def clock(server: Server) -> FakeClock:
    """Fresh limits (from the server's settings) on a clock the test moves."""
    fake = FakeClock()
    server.runtime.throttles = AccountThrottles.from_settings(server.runtime.settings, fake)
    return fake


async def register(http: httpx.AsyncClient, ip: str, username: str | None = None) -> str:
    username = username or unique("u")
    response = await http.post(
        "/auth/register",
        json={"username": username, "password": PASSWORD},
        headers={"X-Forwarded-For": ip},
    )
    assert response.status_code == 201, response.text
    return username


async def sign_in(http: httpx.AsyncClient, ip: str, username: str, password: str) -> httpx.Response:
    return await http.post(
        "/auth/token",
        data={"username": username, "password": password},
        headers={"X-Forwarded-For": ip},
    )


def answer(response: httpx.Response) -> tuple[int, Any, str | None]:
    return response.status_code, response.json(), response.headers.get("retry-after")


def signed_in(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"access_token", "token_type"}


async def test_failures_lock_a_username_even_against_its_right_password(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    ip, other_ip = "198.51.100.1", "198.51.100.2"
    alice = await register(http, ip)
    for _ in range(3):
        assert answer(await sign_in(http, ip, alice, WRONG)) == (401, BAD_CREDENTIALS, None)
    clock.advance(20)
    locked = (429, TOO_MANY_SIGN_INS, str(WINDOW - 20))
    assert answer(await sign_in(http, ip, alice, WRONG)) == locked
    # The right password is not even checked, from any address: guessing gains nothing.
    assert answer(await sign_in(http, ip, alice, PASSWORD)) == locked
    assert answer(await sign_in(http, other_ip, alice, PASSWORD)) == locked
    signed_in(await sign_in(http, ip, await register(http, ip), PASSWORD))  # others sign in
    clock.advance(WINDOW - 20)
    signed_in(await sign_in(http, ip, alice, PASSWORD))


async def test_the_lockout_looks_the_same_for_unknown_usernames(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    existing = await register(http, "198.51.100.3")
    answers = {}
    for ip, username in (("198.51.100.4", existing), ("198.51.100.5", unique("nobody"))):
        failures = [answer(await sign_in(http, ip, username, WRONG)) for _ in range(3)]
        locked = answer(await sign_in(http, ip, username, WRONG))
        answers[username == existing] = failures, locked
    assert answers[True] == answers[False]
    assert answers[True][1] == (429, TOO_MANY_SIGN_INS, str(WINDOW))


async def test_failures_from_one_address_lock_the_address(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    ip, other_ip = "198.51.100.6", "198.51.100.7"
    bob = await register(http, other_ip)
    for _ in range(5):  # each username only once: only the address adds up
        assert (await sign_in(http, ip, unique("nobody"), WRONG)).status_code == 401
    clock.advance(45)
    locked = (429, TOO_MANY_SIGN_INS, str(WINDOW - 45))
    assert answer(await sign_in(http, ip, unique("nobody"), WRONG)) == locked
    assert answer(await sign_in(http, ip, bob, PASSWORD)) == locked
    signed_in(await sign_in(http, other_ip, bob, PASSWORD))
    clock.advance(WINDOW - 45)
    signed_in(await sign_in(http, ip, bob, PASSWORD))


async def test_successful_sign_ins_never_count(http: httpx.AsyncClient, clock: FakeClock) -> None:
    ip = "198.51.100.8"
    users = [await register(http, ip) for _ in range(12)]
    for username in users:  # 12 users from one address, past both failure limits
        signed_in(await sign_in(http, ip, username, PASSWORD))
    for _ in range(10):  # and one of them, again and again
        signed_in(await sign_in(http, ip, users[0], PASSWORD))
    # The address still has all five of its failures: the sixth is refused.
    for index in range(5):
        assert (await sign_in(http, ip, users[index + 1], WRONG)).status_code == 401
    assert answer(await sign_in(http, ip, users[0], PASSWORD)) == (
        429,
        TOO_MANY_SIGN_INS,
        str(WINDOW),
    )


async def test_concurrent_guesses_cannot_slip_past_the_limit(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    carol = await register(http, "198.51.100.9")
    guesses = await asyncio.gather(
        *(sign_in(http, f"198.51.100.{20 + index}", carol, WRONG) for index in range(10))
    )
    statuses = sorted(response.status_code for response in guesses)
    assert statuses == [401] * 3 + [429] * 7


async def test_registrations_are_limited_per_address(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    ip = "198.51.100.10"
    taken = await register(http, ip)
    response = await http.post(
        "/auth/register",
        json={"username": taken, "password": PASSWORD},
        headers={"X-Forwarded-For": ip},
    )
    assert response.status_code == 409  # counts too: it cost a password hash
    for _ in range(13):
        await register(http, ip)
    clock.advance(600)
    refused = await http.post(
        "/auth/register",
        json={"username": unique("u"), "password": PASSWORD},
        headers={"X-Forwarded-For": ip},
    )
    assert answer(refused) == (429, TOO_MANY_REGISTRATIONS, str(REGISTRATION_WINDOW - 600))
    await register(http, "198.51.100.11")  # another address is not affected
    clock.advance(REGISTRATION_WINDOW - 600)
    await register(http, ip)
