"""Limits on failed sign-ins and on registrations, per username and per client address.

The counters live in this worker's memory: each worker counts on its own (N workers let an
address try up to N times the limit) and a restart forgets them. That is enough to make
online password guessing slow; a shared store (Redis) would make the limits global.
No web framework here: the REST routes pass in the username and the address.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from app.config import Settings

Clock = Callable[[], float]

# Longer than any username (150): a longer key cannot name an account, and capping it keeps a
# flood of huge made-up usernames from costing memory.
MAX_KEY_LENGTH = 200


class FailureLimiter(ABC):
    """Counts events (failed sign-ins, registrations) per key in a window of time.

    A key that has `limit` events in its current window must wait for the window to end.
    """

    @abstractmethod
    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may try again, or None if it may try now."""

    @abstractmethod
    def record(self, key: str) -> None:
        """Count one event for `key`."""

    @abstractmethod
    def refund(self, key: str) -> None:
        """Take back one event counted for `key` (an attempt that turned out not to count)."""

    def hit(self, key: str) -> float | None:
        """Seconds to wait if `key` is over its limit, else count the event and return None."""
        wait = self.retry_after(key)
        if wait is None:
            self.record(key)
        return wait


@dataclass(slots=True)
class _Window:
    ends: float
    count: int


class MemoryFailureLimiter(FailureLimiter):
    """Fixed windows that start at a key's first event; memory stays bounded.

    Windows are kept in the order they started, so the expired ones are always at the front
    and every call drops them for little more than the cost of looking. Past `max_keys` live
    windows the oldest is dropped early: under a flood of distinct keys the limit weakens for
    the oldest of them rather than memory growing.
    """

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._windows: dict[str, _Window] = {}  # insertion order == window start order

    def __len__(self) -> int:
        """Keys with a live window."""
        self._prune(self._clock())
        return len(self._windows)

    def retry_after(self, key: str) -> float | None:
        now = self._clock()
        self._prune(now)
        window = self._windows.get(key[:MAX_KEY_LENGTH])
        if window is None or window.count < self.limit:
            return None
        return window.ends - now

    def record(self, key: str) -> None:
        now = self._clock()
        self._prune(now)
        key = key[:MAX_KEY_LENGTH]
        window = self._windows.get(key)
        if window is None:
            while len(self._windows) >= self._max_keys:
                del self._windows[next(iter(self._windows))]
            window = self._windows[key] = _Window(ends=now + self.window_seconds, count=0)
        window.count += 1

    def refund(self, key: str) -> None:
        window = self._windows.get(key[:MAX_KEY_LENGTH])
        if window is not None and window.count > 0:
            window.count -= 1

    def _prune(self, now: float) -> None:
        windows = self._windows
        while windows:
            first = next(iter(windows))
            if windows[first].ends > now:
                return
            del windows[first]


class LoginThrottle:
    """Failed sign-ins per username and per client address.

    An attempt is counted as a failure before its password is checked and refunded if it
    succeeds (or never got an answer): concurrent guesses cannot all pass the check while
    their passwords are being verified, and a successful sign-in never counts.
    """

    def __init__(self, per_username: FailureLimiter, per_address: FailureLimiter) -> None:
        self.per_username = per_username
        self.per_address = per_address

    def attempt(self, username: str, address: str) -> float | None:
        """Seconds to wait if either limit is reached (nothing is counted), else count the
        attempt as a failure and return None."""
        waits = [
            wait
            for wait in (
                self.per_username.retry_after(username),
                self.per_address.retry_after(address),
            )
            if wait is not None
        ]
        if waits:
            return max(waits)
        self.per_username.record(username)
        self.per_address.record(address)
        return None

    def refund(self, username: str, address: str) -> None:
        """The attempt succeeded (or failed for reasons of ours): it does not count."""
        self.per_username.refund(username)
        self.per_address.refund(address)


@dataclass
class AccountThrottles:
    """The worker's limits on signing in and registering."""

    login: LoginThrottle
    registrations: FailureLimiter

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = time.monotonic) -> AccountThrottles:
        window = settings.login_window_seconds
        return cls(
            login=LoginThrottle(
                MemoryFailureLimiter(settings.login_failures_per_username, window, clock=clock),
                MemoryFailureLimiter(settings.login_failures_per_ip, window, clock=clock),
            ),
            registrations=MemoryFailureLimiter(
                settings.registrations_per_ip, settings.registration_window_seconds, clock=clock
            ),
        )


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up, at least 1 (HTTP's Retry-After)."""
    return str(max(1, math.ceil(seconds)))
