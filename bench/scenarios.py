"""The three measurements: fanout, rpc and conns. Each runs against one started Target with
the Fleet of load generator processes and returns one flat, JSON-ready dict."""

from __future__ import annotations

import secrets
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.loadgen import Fleet
from bench.procfs import rss_by_pid, total_cpu
from bench.provision import log
from bench.targets import Target
from bench.wsclient import Endpoint

SEED_POSTS = 500  # the `list` scenario reads a table of this many posts
SEED_CONNECTIONS = 10
SETTLE = 1.0  # seconds between the last idle connection and the RSS reading
WARMUP_PER_WORKER = 5  # connections opened and closed before the first RSS reading


@dataclass(frozen=True)
class Fanout:
    subs: int
    rate: float  # posts per second, over all publishers
    duration: float
    publishers: int = 2
    tags: int = 1
    drain: float = 10.0  # seconds after the last send before a missing event counts as lost


@dataclass(frozen=True)
class Rpc:
    op: str  # list | create
    clients: int
    duration: float


@dataclass(frozen=True)
class Conns:
    count: int


Scenario = Fanout | Rpc | Conns


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p95/p99 and the maximum, in the unit of values."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)

    return {
        "p50_ms": rank(0.50),
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1], 3),
    }


def _split(count: int, parts: int) -> list[list[int]]:
    """Connection indices dealt round-robin over `parts` load generators."""
    return [list(range(part, count, parts)) for part in range(parts)]


def _merge_errors(*counters: dict[str, int]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counter in counters:
        total.update(counter)
    return dict(total)


def _server_state(target: Target) -> tuple[float, list[int]]:
    pids = target.pids()
    return total_cpu(pids), rss_by_pid(pids)


def _close(fleet: Fleet, agents: list[int]) -> None:
    fleet.ask({index: {"cmd": "close"} for index in agents}, timeout=120)


def run_fanout(target: Target, fleet: Fleet, spec: Fanout) -> dict[str, Any]:
    """S subscribers over the workers, P publishers at R posts/s for T s, then a drain."""
    receivers = list(range(len(fleet) - 1))  # the last agent only publishes
    publisher = len(fleet) - 1
    run = secrets.token_hex(3)
    tags = [f"bench{run}t{k}" for k in range(spec.tags)]
    endpoints = target.endpoints(spec.subs)
    connect = {
        agent: {
            "cmd": "connect",
            "endpoints": [endpoints[i] for i in indices],
            "tags": [tags[i % len(tags)] for i in indices],
        }
        for agent, indices in zip(receivers, _split(spec.subs, len(receivers)), strict=True)
    }
    connect[publisher] = {
        "cmd": "connect",
        "endpoints": target.endpoints(spec.publishers, start=spec.subs),
        "tags": [None] * spec.publishers,
    }
    opened = fleet.ask(connect, timeout=60 + spec.subs / 20)
    subscribed: Counter[str] = Counter()
    for agent in receivers:
        subscribed.update(opened[agent]["subscribed"])
    posts = round(spec.rate * spec.duration)
    fleet.ask({agent: {"cmd": "arm", "posts": posts} for agent in receivers}, timeout=30)

    cpu_before, _ = _server_state(target)
    fleet.send(publisher, {"cmd": "publish", "tags": tags, "rate": spec.rate, "posts": posts})
    published = fleet.receive(publisher, timeout=spec.duration + 120)
    acked: list[int] = published["acked"]
    expected = sum(subscribed[tags[seq % len(tags)]] for seq in acked)
    # Drain: wait for every expected event, at most spec.drain seconds after the last send.
    drain_end = published["last_send"] / 1e9 + spec.drain
    while fleet.delivered() < expected and time.monotonic() < drain_end:
        time.sleep(0.02)
    if fleet.delivered() >= expected:
        time.sleep(min(0.2, spec.drain))  # a late duplicate still counts as one
    cpu_after, rss = _server_state(target)

    collected = fleet.ask({agent: {"cmd": "collect"} for agent in receivers}, timeout=120)
    _close(fleet, [*receivers, publisher])
    per_post = array("I", bytes(4 * posts))
    latencies: list[float] = []
    closed: Counter[str] = Counter()
    last_arrival = 0
    for reply in collected.values():
        counts = array("I")
        counts.frombytes(reply["delivered"])
        for seq in range(posts):
            per_post[seq] += counts[seq]
        ns = array("q")
        ns.frombytes(reply["latencies"])
        latencies.extend(value / 1e6 for value in ns)
        closed.update(reply["closed"])
        last_arrival = max(last_arrival, reply["last_arrival"])
    delivered = sum(per_post)
    lost = sum(max(0, subscribed[tags[seq % len(tags)]] - per_post[seq]) for seq in acked)
    window = max(last_arrival, published["last_send"]) - published["first_send"]
    server_cpu = cpu_after - cpu_before
    create_ms = array("d")
    create_ms.frombytes(published["create_ms"])
    errors = _merge_errors(*(opened[agent]["errors"] for agent in opened), published["errors"])
    if spec.subs - sum(subscribed.values()):
        errors["not subscribed"] = spec.subs - sum(subscribed.values())
    return {
        "scenario": "fanout",
        **target.describe(),
        "subs": spec.subs,
        "rate": spec.rate,
        "duration": spec.duration,
        "publishers": spec.publishers,
        "tags": spec.tags,
        "posts": len(acked),
        "expected": expected,
        "delivered": delivered,
        "lost": lost,
        "duplicates": sum(reply["duplicates"] for reply in collected.values()),
        "events_per_s": round(delivered / (window / 1e9), 1) if window > 0 else 0.0,
        **percentiles(latencies),
        "create_p50_ms": percentiles(list(create_ms))["p50_ms"],
        "server_cpu_s": round(server_cpu, 3),
        "cpu_us_per_event": round(server_cpu / delivered * 1e6, 2) if delivered else None,
        "rss_kb": sum(rss),
        "rss_kb_per_worker": rss,
        "client_cpu_s": round(sum(reply["cpu"] for reply in collected.values()), 3),
        "closed_by_server": dict(closed),
        "errors": errors,
    }


def run_rpc(target: Target, fleet: Fleet, spec: Rpc) -> dict[str, Any]:
    """C connections in closed loop doing `list` (over SEED_POSTS posts) or `create`."""
    agents = list(range(len(fleet)))
    if spec.op == "list":
        target.reset()
        seeding = {
            0: {
                "cmd": "connect",
                "endpoints": target.endpoints(SEED_CONNECTIONS),
                "tags": [None] * SEED_CONNECTIONS,
            }
        }
        fleet.ask(seeding, timeout=60)
        seeded = fleet.ask({0: {"cmd": "seed", "posts": SEED_POSTS, "text": "bench seed"}}, 300)
        _close(fleet, [0])
        if seeded[0]["errors"]:
            raise RuntimeError(f"seeding failed: {seeded[0]['errors']}")
    connect = _connect_commands(agents, target.endpoints(spec.clients), None)
    opened = fleet.ask(connect, timeout=60 + spec.clients / 20)
    cpu_before, _ = _server_state(target)
    command = {"cmd": "rpc", "op": spec.op, "duration": spec.duration}
    replies = fleet.ask({agent: dict(command) for agent in connect}, spec.duration + 120)
    cpu_after, rss = _server_state(target)
    _close(fleet, list(connect))
    latencies: list[float] = []
    for reply in replies.values():
        values = array("d")
        values.frombytes(reply["latencies"])
        latencies.extend(values)
    elapsed = max(reply["elapsed"] for reply in replies.values())
    server_cpu = cpu_after - cpu_before
    return {
        "scenario": "rpc",
        **target.describe(),
        "op": spec.op,
        "clients": spec.clients,
        "duration": spec.duration,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        **percentiles(latencies),
        "server_cpu_s": round(server_cpu, 3),
        "cpu_us_per_request": round(server_cpu / len(latencies) * 1e6, 1) if latencies else None,
        "rss_kb": sum(rss),
        "client_cpu_s": round(sum(reply["cpu"] for reply in replies.values()), 3),
        "errors": _merge_errors(
            *(opened[agent]["errors"] for agent in opened),
            *(reply["errors"] for reply in replies.values()),
        ),
    }


def _connect_commands(
    agents: list[int], endpoints: list[Endpoint], tag: str | None
) -> dict[int, dict[str, Any]]:
    """A `connect` command per agent with its even share of the endpoints (agents left with
    none get no command), every connection subscribing to `tag` (None: none)."""
    return {
        agent: {
            "cmd": "connect",
            "endpoints": [endpoints[i] for i in indices],
            "tags": [tag] * len(indices),
        }
        for agent, indices in zip(agents, _split(len(endpoints), len(agents)), strict=True)
        if indices
    }


def run_conns(target: Target, fleet: Fleet, spec: Conns) -> dict[str, Any]:
    """N idle connections, each subscribed to the run's hashtag; the workers' RSS growth."""
    agents = list(range(len(fleet)))
    tag = f"bench{secrets.token_hex(3)}idle"
    # The first connections of a fresh worker pay for lazy imports, pools and caches; that is
    # not the cost of a connection, so it happens before the baseline reading.
    warmup = target.endpoints(WARMUP_PER_WORKER * target.workers)
    fleet.ask({0: {"cmd": "connect", "endpoints": warmup, "tags": [tag] * len(warmup)}}, 60)
    _close(fleet, [0])
    time.sleep(SETTLE)
    _, rss_before = _server_state(target)
    connect = _connect_commands(agents, target.endpoints(spec.count), tag)
    started = time.monotonic()
    opened = fleet.ask(connect, timeout=120 + spec.count / 20)
    connect_s = time.monotonic() - started
    time.sleep(SETTLE)
    _, rss_after = _server_state(target)
    _close(fleet, list(connect))
    subscribed = sum(sum(reply["subscribed"].values()) for reply in opened.values())
    growth = sum(rss_after) - sum(rss_before)
    log(f"conns: {subscribed}/{spec.count} subscribed in {connect_s:.1f} s")
    return {
        "scenario": "conns",
        **target.describe(),
        "conns": spec.count,
        "subscribed": subscribed,
        "connect_s": round(connect_s, 2),
        "rss_kb_before": sum(rss_before),
        "rss_kb_after": sum(rss_after),
        "rss_kb_per_worker": rss_after,
        "kb_per_conn": round(growth / subscribed, 2) if subscribed else None,
        "errors": _merge_errors(*(reply["errors"] for reply in opened.values())),
    }


def run(target: Target, fleet: Fleet, spec: Scenario) -> dict[str, Any]:
    if isinstance(spec, Fanout):
        return run_fanout(target, fleet, spec)
    if isinstance(spec, Rpc):
        return run_rpc(target, fleet, spec)
    return run_conns(target, fleet, spec)
