"""The benchmark's smoke mode, as CI runs it: two livepost workers on PostgreSQL + Redis
driven over real WebSockets by separate load generator processes, with no loss and no error.
And the comparison systems it measures livepost against are in the repository itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.cluster import ROOT
from bench.targets import baseline_source, checkout, copy_baseline
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


# What bench/targets.py and the baselines' start scripts use, per baseline.
BASELINE_FILES = {
    "dcrf_social": """README.md requirements.txt manage.py start_workers.sh stop_workers.sh
        socialnet/settings.py socialnet/asgi.py socialnet/urls.py posts/models.py
        posts/consumers.py posts/migrations/0001_initial.py
        posts/management/commands/bench_sessions.py posts/management/commands/bench_reset.py
        """.split(),
    "raw_relay": "README.md requirements.txt server.py".split(),
}


@pytest.mark.parametrize("name", sorted(BASELINE_FILES))
def test_baselines_are_inside_the_repository(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIVEPOST_BASELINES", raising=False)
    source = baseline_source(name)
    assert source == ROOT / "bench" / "baselines" / name
    for relative in BASELINE_FILES[name]:
        assert (source / relative).is_file(), relative
        if relative.endswith(".sh"):
            assert os.access(source / relative, os.X_OK), relative
    # Every requirement pinned, so that a rerun measures the same system.
    for line in (source / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "==" in line, line
    copy = copy_baseline(name, tmp_path)  # what a run starts from
    assert copy == tmp_path / name and (copy / "requirements.txt").is_file()


def test_baselines_folder_can_be_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEPOST_BASELINES", str(tmp_path))
    assert baseline_source("raw_relay") == tmp_path / "raw_relay"


def test_an_earlier_revision_is_exported_to_run_beside_this_one(tmp_path: Path) -> None:
    """`--compare livepost@REV` runs the repository at REV: its tree comes from git."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    commit, tree = checkout("HEAD", tmp_path)
    assert (commit, tree) == (head[:12], tmp_path / f"livepost-{head[:12]}")
    assert (tree / "app" / "main.py").is_file() and (tree / "alembic.ini").is_file()
    assert checkout(head, tmp_path) == (commit, tree)  # exported once, then reused
