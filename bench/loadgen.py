"""The client side: load generator processes, each an asyncio loop with many connections.

The orchestrator (the `python -m bench` process) never opens a measured connection itself:
it starts a Fleet of agent processes and sends them commands over pipes. An agent owns its
connections and answers each command with a picklable dict. Receivers record the arrival
time of every event; the send time travels in the post's body, and time.monotonic_ns() is
CLOCK_MONOTONIC, one clock for every process on the machine, so arrival - send is the
create->event latency whichever processes sent and received.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import multiprocessing
import os
import resource
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from bench.wsclient import Endpoint, WsClient, connect

MARK = b"lp~"  # the body carries lp~<seq>~<send ns>~ ; no JSON escaping touches it
_STATUS = b'"response_status"'
_REQUEST_ID = b'"request_id"'
REPLY_TIMEOUT = 30.0
COMMAND_TIMEOUT = 600.0


def body_for(tag: str, seq: int, sent_ns: int) -> str:
    return f"#{tag} bench lp~{seq}~{sent_ns}~"


def _int_after(payload: bytes, index: int) -> int | None:
    """The integer after `"key":` starting at index (the key's position), or None (null)."""
    colon = payload.find(b":", index)
    start = colon + 1
    while payload[start : start + 1] == b" ":
        start += 1
    end = start
    while payload[end : end + 1].isdigit() or payload[end : end + 1] == b"-":
        end += 1
    return int(payload[start:end]) if end > start else None


class Peer:
    """One connection and what the agent expects from it."""

    __slots__ = ("client", "seen", "waiting")

    def __init__(self) -> None:
        self.client: WsClient | None = None
        self.seen = bytearray()  # per post sequence id: already delivered here
        self.waiting: dict[int, asyncio.Future[tuple[int, int]]] = {}


class Agent:
    """The state of one load generator process."""

    def __init__(self, progress: ctypes.c_longlong) -> None:
        self.progress = progress
        self.peers: list[Peer] = []
        self.next_request = 1
        self.errors: Counter[str] = Counter()
        self._arm(0)

    def _arm(self, posts: int) -> None:
        self.posts = posts
        self.delivered = array("I", bytes(4 * posts))  # unique deliveries per sequence id
        self.latencies = array("q")
        self.duplicates = 0
        self.foreign = 0  # frames that are neither replies nor this run's events
        self.last_arrival = 0
        self.cpu_start = _cpu()
        for peer in self.peers:
            peer.seen = bytearray(posts)

    # -- receiving ----------------------------------------------------------------------------
    def _on_message(self, peer: Peer, payload: bytes, now: int) -> None:
        status_at = payload.rfind(_STATUS)
        if status_at >= 0:  # a reply: livepost, DCRF and the raw relay all put these keys last
            request_at = payload.rfind(_REQUEST_ID)
            request_id = _int_after(payload, request_at) if request_at >= 0 else None
            waiter = peer.waiting.pop(request_id, None) if request_id is not None else None
            if waiter is not None and not waiter.done():
                waiter.set_result((_int_after(payload, status_at) or 0, now))
            return
        # An event. DCRF's carry {"body"} only and no request_id, so the body identifies it.
        mark = payload.find(MARK)
        if mark < 0:
            self.foreign += 1
            return
        start = mark + len(MARK)
        middle = payload.find(b"~", start)
        end = payload.find(b"~", middle + 1)
        seq = int(payload[start:middle])
        if seq >= self.posts:
            self.foreign += 1
            return
        if peer.seen[seq]:
            self.duplicates += 1
            return
        peer.seen[seq] = 1
        self.delivered[seq] += 1
        self.latencies.append(now - int(payload[middle + 1 : end]))
        self.last_arrival = now
        self.progress.value += 1

    def _request(self, peer: Peer, message: dict[str, Any]) -> asyncio.Future[tuple[int, int]]:
        """Send message with a fresh request_id; the future gets (status, arrival ns)."""
        request_id = self.next_request
        self.next_request += 1
        waiter: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        peer.waiting[request_id] = waiter
        assert peer.client is not None
        peer.client.send_text(json.dumps({**message, "request_id": request_id}))
        return waiter

    # -- commands -----------------------------------------------------------------------------
    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, "cmd_" + command.pop("cmd"))
        result: dict[str, Any] = await handler(**command)
        return result

    async def cmd_connect(
        self, endpoints: list[Endpoint], tags: list[str | None], concurrency: int = 32
    ) -> dict[str, Any]:
        """Open a connection per endpoint and subscribe it to its tag (None: stay idle)."""
        gate = asyncio.Semaphore(concurrency)
        subscribed: Counter[str] = Counter()
        errors: Counter[str] = Counter()

        async def open_one(endpoint: Endpoint, tag: str | None) -> None:
            peer = Peer()
            async with gate:
                try:
                    peer.client = await connect(
                        endpoint, lambda data, now: self._on_message(peer, data, now)
                    )
                    self.peers.append(peer)
                    if tag is None:
                        return
                    request = {"action": "subscribe_to_hashtag", "hashtag": tag}
                    async with asyncio.timeout(REPLY_TIMEOUT):
                        status, _ = await self._request(peer, request)
                except Exception as error:
                    errors[f"connect: {type(error).__name__}: {error}"[:160]] += 1
                    return
                if status == 201:
                    subscribed[tag] += 1
                else:
                    errors[f"subscribe answered {status}"] += 1

        async with asyncio.TaskGroup() as group:
            for endpoint, tag in zip(endpoints, tags, strict=True):
                group.create_task(open_one(endpoint, tag))
        return {"connected": len(self.peers), "subscribed": dict(subscribed), "errors": errors}

    async def cmd_arm(self, posts: int) -> dict[str, Any]:
        """Reset the event counters for a fan-out run of `posts` sequence ids."""
        self._arm(posts)
        self.progress.value = 0
        return {}

    async def cmd_publish(self, tags: list[str], rate: float, posts: int) -> dict[str, Any]:
        """Create posts 0..posts-1 at a fixed total rate over this agent's connections.

        Open loop: a send never waits for an earlier reply, as real writers do not wait for
        each other, so a slow server shows up as latency rather than as a lower rate."""
        if not self.peers:
            raise RuntimeError("no publisher connection is open")
        loop = asyncio.get_running_loop()
        start = time.monotonic_ns()
        interval = 1e9 / rate
        waiters: list[tuple[int, int, asyncio.Future[tuple[int, int]]]] = []
        first_send = 0
        for seq in range(posts):
            due = start + int(seq * interval)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            peer = self.peers[seq % len(self.peers)]
            if peer.client is None or not peer.client.is_open:
                self.errors["publisher connection closed"] += 1
                continue
            sent = time.monotonic_ns()
            first_send = first_send or sent
            body = body_for(tags[seq % len(tags)], seq, sent)
            message = {"action": "create", "data": {"body": body}}
            waiters.append((seq, sent, self._request(peer, message)))
        last_send = time.monotonic_ns()
        acked: list[int] = []
        create_ms = array("d")
        errors: Counter[str] = Counter()
        deadline = loop.time() + REPLY_TIMEOUT
        for seq, sent, waiter in waiters:
            try:
                async with asyncio.timeout_at(deadline):
                    status, arrived = await waiter
            except TimeoutError:
                errors["create: no reply"] += 1
                continue
            if status == 201:
                acked.append(seq)
                create_ms.append((arrived - sent) / 1e6)
            else:
                errors[f"create answered {status}"] += 1
        errors.update(self.errors)
        self.errors.clear()
        return {
            "acked": acked,
            "first_send": first_send,
            "last_send": last_send,
            "create_ms": create_ms.tobytes(),
            "errors": errors,
        }

    async def cmd_collect(self) -> dict[str, Any]:
        """The fan-out counters since cmd_arm, and how many connections the server closed."""
        closed = Counter(
            str(peer.client.close_code)
            for peer in self.peers
            if peer.client is not None and not peer.client.is_open
        )
        return {
            "delivered": self.delivered.tobytes(),
            "latencies": self.latencies.tobytes(),
            "duplicates": self.duplicates,
            "foreign": self.foreign,
            "last_arrival": self.last_arrival,
            "closed": dict(closed),
            "cpu": _cpu() - self.cpu_start,
        }

    async def cmd_seed(self, posts: int, text: str) -> dict[str, Any]:
        """Create `posts` untagged posts, each connection one request at a time."""
        errors: Counter[str] = Counter()
        counter = iter(range(posts))

        async def writer(peer: Peer) -> None:
            for number in counter:
                message = {"action": "create", "data": {"body": f"{text} {number}"}}
                async with asyncio.timeout(REPLY_TIMEOUT):
                    status, _ = await self._request(peer, message)
                if status != 201:
                    errors[f"seed create answered {status}"] += 1

        async with asyncio.TaskGroup() as group:
            for peer in self.peers:
                group.create_task(writer(peer))
        return {"errors": errors}

    async def cmd_rpc(self, op: str, duration: float) -> dict[str, Any]:
        """Closed loop: every connection sends its next request when the last one is answered."""
        if op == "list":
            message: dict[str, Any] = {"action": "list"}
            expected = 200
        elif op == "create":
            message, expected = {"action": "create", "data": {"body": "bench rpc"}}, 201
        else:
            raise ValueError(f"unknown rpc op {op}")
        latencies = array("d")
        errors: Counter[str] = Counter()
        cpu = _cpu()
        start = time.monotonic()
        stop = start + duration

        async def client(peer: Peer) -> None:
            while time.monotonic() < stop:
                if peer.client is None or not peer.client.is_open:
                    errors["connection closed"] += 1
                    return
                sent = time.monotonic_ns()
                try:
                    async with asyncio.timeout(REPLY_TIMEOUT):
                        status, arrived = await self._request(peer, message)
                except TimeoutError:
                    errors["no reply"] += 1
                    return
                if status == expected:
                    latencies.append((arrived - sent) / 1e6)
                else:
                    errors[f"{op} answered {status}"] += 1

        async with asyncio.TaskGroup() as group:
            for peer in self.peers:
                group.create_task(client(peer))
        return {
            "latencies": latencies.tobytes(),
            "elapsed": time.monotonic() - start,
            "errors": errors,
            "cpu": _cpu() - cpu,
        }

    async def cmd_close(self) -> dict[str, Any]:
        """Close every connection (close handshake, bounded) and forget them."""
        gate = asyncio.Semaphore(256)

        async def close_one(client: WsClient) -> None:
            async with gate:
                await client.close()

        async with asyncio.TaskGroup() as group:
            for peer in self.peers:
                if peer.client is not None:
                    group.create_task(close_one(peer.client))
        count = len(self.peers)
        self.peers.clear()
        return {"closed": count}


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit: 10,000 sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


async def _serve(pipe: Connection, progress: ctypes.c_longlong) -> None:
    agent = Agent(progress)
    loop = asyncio.get_running_loop()
    while True:
        # A thread waits on the pipe so the event loop keeps receiving meanwhile; a parent
        # that dies closes the pipe and recv raises EOFError, which ends this process.
        command: dict[str, Any] = await loop.run_in_executor(None, pipe.recv)
        if command.get("cmd") == "exit":
            await agent.cmd_close()
            return
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                reply = {"ok": True, **await agent.handle(command)}
        except Exception as error:
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        pipe.send(reply)


def agent_main(pipe: Connection, progress: ctypes.c_longlong) -> None:
    """Entry point of a load generator process."""
    raise_open_files_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio works, only slower
        pass
    try:
        asyncio.run(_serve(pipe, progress))
    except (EOFError, KeyboardInterrupt):
        pass


class AgentError(RuntimeError):
    """An agent answered a command with an error."""


class Fleet:
    """The orchestrator's handle on its load generator processes."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.progress: list[ctypes.c_longlong] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(size):
            ours, theirs = context.Pipe()
            counter = context.RawValue(ctypes.c_longlong, 0)
            process = context.Process(target=agent_main, args=(theirs, counter), daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.progress.append(counter)
            self.processes.append(process)

    def __len__(self) -> int:
        return len(self.pipes)

    def send(self, index: int, command: dict[str, Any]) -> None:
        self.pipes[index].send(command)

    def receive(self, index: int, timeout: float) -> dict[str, Any]:
        if not self.pipes[index].poll(timeout):
            raise TimeoutError(f"load generator {index} did not answer in {timeout:.0f} s")
        reply: dict[str, Any] = self.pipes[index].recv()
        if not reply.pop("ok"):
            raise AgentError(f"load generator {index}: {reply['error']}")
        return reply

    def ask(self, commands: dict[int, dict[str, Any]], timeout: float) -> dict[int, dict[str, Any]]:
        """Send each agent its command at once, then gather every answer within timeout."""
        for index, command in commands.items():
            self.send(index, command)
        deadline = time.monotonic() + timeout
        return {
            index: self.receive(index, max(0.0, deadline - time.monotonic())) for index in commands
        }

    def delivered(self) -> int:
        """Unique events received since the last arm, over every agent (read without a lock)."""
        return sum(counter.value for counter in self.progress)

    def close(self) -> None:
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            try:
                pipe.send({"cmd": "exit"})
            except OSError:
                pass
            process.join(15)
            if process.is_alive():
                process.terminate()
                process.join(5)
            pipe.close()
