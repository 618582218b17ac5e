"""`python -m bench`: parse the plan, start the targets, run every scenario point, report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench import report
from bench.loadgen import AgentError, Fleet, raise_open_files_limit
from bench.provision import log
from bench.scenarios import Conns, Fanout, Rpc, Scenario, run
from bench.targets import (
    ROOT,
    DcrfTarget,
    LivepostTarget,
    RawTarget,
    Target,
    UrlTarget,
    checkout,
)

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/livepost_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
EXAMPLES = """
examples:
  python -m bench --smoke
  python -m bench --fanout 100x10,500x20,1000x40 --duration 10
  python -m bench --compare dcrf --fanout 500x20 --rpc list:20,create:20 --conns 1000
  python -m bench --target raw --fanout 1000x40
  python -m bench --target url --url ws://127.0.0.1:8001/ws?token=JWT --pid 1234 --conns 500
"""


def _csv(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [convert(part) for part in text.split(",") if part]

    return parse


def _baseline(text: str) -> str:
    if text in ("raw", "dcrf") or (text.startswith("livepost@") and len(text) > len("livepost@")):
        return text
    raise argparse.ArgumentTypeError("raw, dcrf or livepost@REV")


def _fanout_point(text: str) -> tuple[int, float]:
    subs, _, rate = text.lower().partition("x")
    return int(subs), float(rate)


def _rpc_point(text: str) -> tuple[str, int]:
    op, _, clients = text.partition(":")
    if op not in ("list", "create"):
        raise argparse.ArgumentTypeError(f"rpc op must be list or create, not {op!r}")
    return op, int(clients or 20)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Drive a deployment speaking the DCRF action protocol over WebSockets.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", choices=["livepost", "dcrf", "raw", "url"], default="livepost")
    p.add_argument(
        "--compare",
        type=_baseline,
        help="run livepost and this baseline, alternating per scenario point; print ratios: "
        "raw, dcrf, or livepost@REV (this repository at a git revision, e.g. livepost@HEAD~3, "
        "on a database of its own)",
    )
    p.add_argument("--workers", type=int, default=2, help="livepost and dcrf worker processes")
    p.add_argument("--rounds", type=int, default=1, help="repeat each point (alternating)")
    p.add_argument("--fanout", type=_csv(_fanout_point), default=None, metavar="SxR,...",
                   help="subscribers x posts/s points, e.g. 500x20,1000x40")  # fmt: skip
    p.add_argument("--duration", type=float, default=10.0, help="fanout publishing seconds")
    p.add_argument("--publishers", type=int, default=2)
    p.add_argument("--tags", type=int, default=1, help="hashtags the subscribers are spread over")
    p.add_argument("--drain", type=float, default=10.0,
                   help="seconds after the last post before a missing event is lost")  # fmt: skip
    p.add_argument("--rpc", type=_csv(_rpc_point), default=None, metavar="OP:C,...",
                   help="closed-loop points, e.g. list:20,create:20")  # fmt: skip
    p.add_argument("--rpc-duration", type=float, default=10.0)
    p.add_argument("--conns", type=_csv(int), default=None, metavar="N,...",
                   help="idle subscribed connections, e.g. 10000")  # fmt: skip
    p.add_argument("--procs", type=int, default=max(2, os.cpu_count() or 2),
                   help="receiving load generator processes (one more publishes)")  # fmt: skip
    p.add_argument("--smoke", action="store_true",
                   help="fast CI check: livepost, non-zero exit on loss or error")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="non-zero exit on any loss or error")
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE),
                   help="livepost's database (created if missing; its posts get deleted); "
                   "its server also hosts the dcrf role and database")  # fmt: skip
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS))
    p.add_argument("--out", type=Path, default=ROOT / "bench-results",
                   help="where the .jsonl, .md and .png go, and the baselines' copies")  # fmt: skip
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--url", action="append", default=[], help="--target url: a worker's ws:// URL")
    p.add_argument("--pid", action="append", type=int, default=[], help="--target url: its PIDs")
    p.add_argument("--header", action="append", default=[],
                   help="--target url: a handshake header, 'Name: value'")  # fmt: skip
    p.add_argument("--name", default="url", help="--target url: the name in the results")
    return p


def plan(args: argparse.Namespace) -> list[Scenario]:
    """The scenario points in run order: conns first, on workers that have not yet grown."""
    if args.smoke:
        return [
            Conns(50),
            Fanout(20, 10.0, 2.0, publishers=1, tags=1, drain=5.0),
            Rpc("list", 5, 2.0),
            Rpc("create", 5, 1.0),
        ]
    nothing_chosen = args.fanout is None and args.rpc is None and args.conns is None
    fanout = args.fanout or ([(100, 10.0), (500, 20.0), (1000, 40.0)] if nothing_chosen else [])
    rpc = args.rpc or ([("list", 20), ("create", 20)] if nothing_chosen else [])
    conns = args.conns or ([1000] if nothing_chosen else [])
    return [
        *(Conns(count) for count in conns),
        *(
            Fanout(subs, rate, args.duration, args.publishers, args.tags, args.drain)
            for subs, rate in fanout
        ),
        *(Rpc(op, clients, args.rpc_duration) for op, clients in rpc),
    ]


def make_target(name: str, args: argparse.Namespace) -> Target:
    scratch = args.out / "baselines"
    if name == "livepost":
        run_dir = args.out / "run" / f"livepost-{time.strftime('%Y%m%d-%H%M%S')}"
        return LivepostTarget(args.workers, args.database_url, args.redis_url, run_dir)
    if name.startswith("livepost@"):
        commit, tree = checkout(name.partition("@")[2], scratch)
        run_dir = args.out / "run" / f"livepost-{commit}-{time.strftime('%Y%m%d-%H%M%S')}"
        database = make_url(args.database_url).set(database=f"livepost_bench_{commit}")
        return LivepostTarget(
            args.workers,
            database.render_as_string(hide_password=False),
            args.redis_url,
            run_dir,
            source=tree,
            name=name,
        )
    if name == "dcrf":
        return DcrfTarget(args.workers, args.database_url, args.redis_url, scratch)
    if name == "raw":
        return RawTarget(scratch)
    if not args.url:
        raise SystemExit("--target url needs --url (and --pid for CPU and memory)")
    headers = tuple(
        (name.strip(), value.strip())
        for name, _, value in (header.partition(":") for header in args.header)
    )
    return UrlTarget(args.url, args.pid, headers, args.name)


def failures(result: dict[str, Any]) -> list[str]:
    """Why a run is not clean: losses, duplicates, errors, connections the server closed."""
    found = []
    for key in ("lost", "duplicates"):
        if result.get(key):
            found.append(f"{key}={result[key]}")
    if result.get("errors"):
        found.append(f"errors={result['errors']}")
    if result.get("closed_by_server"):
        found.append(f"closed_by_server={result['closed_by_server']}")
    if result["scenario"] == "conns" and result["subscribed"] != result["conns"]:
        found.append(f"subscribed {result['subscribed']}/{result['conns']}")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.smoke:
        args.target, args.compare, args.strict, args.rounds = "livepost", None, True, 1
    names = ["livepost", args.compare] if args.compare else [args.target]
    points = plan(args)
    args.out.mkdir(parents=True, exist_ok=True)
    # Servers we start inherit this limit: thousands of sockets per worker need it raised.
    raise_open_files_limit()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[dict[str, Any]] = []
    problems: list[str] = []
    targets: list[Target] = []
    fleet: Fleet | None = None
    try:
        for name in names:
            target = make_target(name, args)
            targets.append(target)
            target.start()
        fleet = Fleet(args.procs + 1)
        used: set[str] = set()
        for spec in points:
            for round_ in range(args.rounds):
                for target in targets:
                    log(f"{target.name}: {spec} (round {round_ + 1}/{args.rounds})")
                    if isinstance(spec, Conns) and target.name in used:
                        # Freed memory is reused by new connections: measure on new workers.
                        log(f"{target.name}: restarting the workers")
                        target.restart()
                    used.add(target.name)
                    try:
                        result = run(target, fleet, spec)
                    except AgentError as error:
                        # The agents are still in step (each answered): report and go on.
                        problems.append(f"{target.name} {spec}: {error}")
                        log(f"FAILED {target.name} {spec}: {error}")
                        fleet.ask({i: {"cmd": "close"} for i in range(len(fleet))}, 120)
                        continue
                    results.append(result)
                    print(report.json_line(result), flush=True)
                    for problem in failures(result):
                        problems.append(f"{target.name} {result['scenario']}: {problem}")
    finally:
        if fleet is not None:
            fleet.close()
        for target in reversed(targets):
            target.stop()
    tables = report.markdown(results)
    if args.compare:
        tables += "\n\n" + report.ratios(results, "livepost", args.compare)
    print("\n" + tables, flush=True)
    base = args.out / f"bench-{stamp}"
    base.with_suffix(".jsonl").write_text("".join(report.json_line(r) + "\n" for r in results))
    base.with_suffix(".md").write_text(tables + "\n")
    if not args.no_plot and (image := report.plot(results, base.with_suffix(".png"))):
        log(f"plot: {image}")
    log(f"results: {base}.jsonl, {base}.md")
    for problem in problems:
        log(f"PROBLEM {problem}")
    return 1 if args.strict and problems else 0


if __name__ == "__main__":
    sys.exit(main())
