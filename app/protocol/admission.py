"""Who may hold a connection on this worker: per-address and per-user caps, and shutdown.

Counts are per worker (each uvicorn process enforces its own share); the registry also lets a
stopping worker ask every live connection to finish and close with 1001, and closes a
deactivated user's connections (1008) when told to through the broker's control channel.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable


class Ticket:
    """One admitted connection."""

    __slots__ = ("_registry", "ip", "on_revoke", "on_shutdown", "user_id")

    def __init__(
        self,
        registry: Admission,
        ip: str,
        user_id: int | None,
        on_shutdown: Callable[[], None],
        on_revoke: Callable[[], None],
    ) -> None:
        self._registry = registry
        self.ip = ip
        self.user_id = user_id
        self.on_shutdown = on_shutdown
        self.on_revoke = on_revoke

    def switch_user(self, user_id: int) -> bool:
        """Count the connection for user_id from now on (after `authenticate`)."""
        return self._registry._switch(self, user_id)


class Admission:
    def __init__(self, max_per_ip: int, max_per_user: int) -> None:
        self._max_per_ip = max_per_ip
        self._max_per_user = max_per_user
        self._by_ip: Counter[str] = Counter()
        self._by_user: Counter[int] = Counter()
        self._tickets: set[Ticket] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.closing = False

    def __len__(self) -> int:
        return len(self._tickets)

    def admit(
        self,
        ip: str,
        user_id: int | None,
        on_shutdown: Callable[[], None],
        on_revoke: Callable[[], None] | None = None,
    ) -> Ticket | None:
        """A ticket, or None when the worker is stopping or a cap is reached. on_shutdown
        ends the connection when the worker stops, on_revoke (default: the same) when its
        user is deactivated."""
        if self.closing or self._by_ip[ip] >= self._max_per_ip:
            return None
        if user_id is not None and self._by_user[user_id] >= self._max_per_user:
            return None
        ticket = Ticket(self, ip, user_id, on_shutdown, on_revoke or on_shutdown)
        self._by_ip[ip] += 1
        if user_id is not None:
            self._by_user[user_id] += 1
        self._tickets.add(ticket)
        self._empty.clear()
        return ticket

    def release(self, ticket: Ticket) -> None:
        if ticket not in self._tickets:
            return
        self._tickets.discard(ticket)
        _decrement(self._by_ip, ticket.ip)
        if ticket.user_id is not None:
            _decrement(self._by_user, ticket.user_id)
        if not self._tickets:
            self._empty.set()

    def _switch(self, ticket: Ticket, user_id: int) -> bool:
        if user_id == ticket.user_id:
            return True
        if self._by_user[user_id] >= self._max_per_user:
            return False
        if ticket.user_id is not None:
            _decrement(self._by_user, ticket.user_id)
        ticket.user_id = user_id
        self._by_user[user_id] += 1
        return True

    def close_user(self, user_id: int) -> int:
        """Ask every connection of user_id to close (the user was deactivated); how many."""
        tickets = [ticket for ticket in self._tickets if ticket.user_id == user_id]
        for ticket in tickets:
            ticket.on_revoke()
        return len(tickets)

    async def close_all(self, grace: float) -> None:
        """Refuse new connections, ask the live ones to close, wait for them to go."""
        self.closing = True
        for ticket in list(self._tickets):
            ticket.on_shutdown()
        try:
            async with asyncio.timeout(grace):
                await self._empty.wait()
        except TimeoutError:
            pass


def _decrement(counter: Counter[str] | Counter[int], key: object) -> None:
    counter[key] -= 1  # type: ignore[index]
    if counter[key] <= 0:  # type: ignore[index]
        del counter[key]  # type: ignore[arg-type]
