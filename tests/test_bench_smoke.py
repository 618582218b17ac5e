"""The benchmark's smoke mode, as CI runs it: two livepost workers on PostgreSQL + Redis
driven over real WebSockets by separate load generator processes, with no loss and no error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.cluster import ROOT
from tests.cluster_support import fresh_database, require_services

COMMON = {"scenario", "target", "workers", "errors"}
KEYS = {
    "fanout": COMMON
    | {"subs", "rate", "posts", "expected", "delivered", "lost", "duplicates", "events_per_s"}
    | {"p50_ms", "p95_ms", "p99_ms", "max_ms", "server_cpu_s", "cpu_us_per_event", "rss_kb"},
    "rpc": COMMON | {"op", "clients", "requests", "requests_per_s", "p50_ms", "p99_ms"},
    "conns": COMMON | {"conns", "subscribed", "rss_kb_before", "rss_kb_after", "kb_per_conn"},
}


@pytest.mark.timeout(90)
def test_smoke_mode_runs_every_scenario_without_loss(tmp_path: Path) -> None:
    pg_url, redis_url = require_services()
    with fresh_database(pg_url) as database_url:
        command = [sys.executable, "-m", "bench", "--smoke", "--database-url", database_url,
                   "--redis-url", redis_url, "--out", str(tmp_path)]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stderr[-4000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert sorted(result["scenario"] for result in results) == ["conns", "fanout", "rpc", "rpc"]
    for result in results:
        assert KEYS[result["scenario"]] <= result.keys(), result
        assert result["target"] == "livepost" and result["errors"] == {}, result
    (fanout,) = [result for result in results if result["scenario"] == "fanout"]
    assert (fanout["expected"], fanout["delivered"], fanout["lost"], fanout["duplicates"]) == (
        fanout["subs"] * fanout["posts"], fanout["expected"], 0, 0,
    )  # fmt: skip
    assert fanout["posts"] == 20 and fanout["p99_ms"] is not None
    assert "| livepost |" in done.stdout  # the markdown table follows the JSON lines
    assert list(tmp_path.glob("bench-*.png")) and list(tmp_path.glob("bench-*.jsonl"))
