"""The deployments the benchmark drives: how to start and stop them, where their workers
listen, how a client authenticates, and which PIDs to read CPU and memory from."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import httpx

from bench.provision import (
    ensure_database,
    ensure_role,
    ensure_venv,
    installed_versions,
    log,
    run_sql,
)
from bench.wsclient import Endpoint

ROOT = Path(__file__).resolve().parents[1]
# The comparison systems, in the repository (bench/baselines/<name>); LIVEPOST_BASELINES
# names another folder holding the same <name> folders.
BASELINES = Path(__file__).resolve().parent / "baselines"
Headers = tuple[tuple[str, str], ...]
START_TIMEOUT = 60.0


class Target(ABC):
    """One deployment speaking the action protocol over WebSockets."""

    name: str
    workers: int

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def pids(self) -> list[int]:
        """The worker processes whose CPU and RSS are the server's cost."""

    @abstractmethod
    def worker_urls(self) -> list[str]:
        """One ws:// URL per worker; clients are spread over them round-robin."""

    def identities(self) -> list[tuple[str, Headers]]:
        """(query string to append, handshake headers) per user; anonymous by default."""
        return [("", ())]

    def restart(self) -> None:
        """Fresh worker processes (conns measures growth from a clean heap)."""
        self.stop()
        self.start()

    def reset(self) -> None:  # noqa: B027 (a hook: targets without a table keep it empty)
        """Empty the posts table where there is one (before seeding the `list` scenario)."""

    def describe(self) -> dict[str, Any]:
        return {"target": self.name, "workers": self.workers}

    def endpoints(self, count: int, start: int = 0) -> list[Endpoint]:
        """count connections, number i going to worker (start + i) % W as user i % U."""
        urls, users = self.worker_urls(), self.identities()
        result = []
        for index in range(start, start + count):
            query, headers = users[index % len(users)]
            result.append(Endpoint.from_url(urls[index % len(urls)] + query, headers))
        return result


def wait_for_port(port: int, deadline: float, process: subprocess.Popen[bytes]) -> None:
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if process.poll() is not None:
                code = process.returncode
                raise RuntimeError(f"the server on port {port} exited ({code})") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def baseline_source(name: str) -> Path:
    """The folder of the comparison system name: bench/baselines/<name> unless
    LIVEPOST_BASELINES points elsewhere."""
    return Path(os.environ.get("LIVEPOST_BASELINES") or BASELINES) / name


def copy_baseline(name: str, scratch: Path) -> Path:
    """A copy of the baseline name in scratch, where its virtualenv, PID files and logs go,
    so that running it leaves the source tree as it was."""
    source = baseline_source(name)
    if not source.is_dir():
        raise FileNotFoundError(f"baseline {source} not found")
    destination = scratch / name
    shutil.copytree(
        source,
        destination,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".venv*", "run", "__pycache__"),
    )
    return destination


class LivepostTarget(Target):
    """W uvicorn workers started by app.cli.cluster.Cluster on PostgreSQL + Redis, no nginx:
    clients connect to the worker ports directly, so the balancer costs nothing."""

    name = "livepost"
    # Per-connection and per-address limits protect a public service from one client; the
    # benchmark is one client with thousands of connections from one address.
    LIMITS: ClassVar[dict[str, str]] = {
        "WS_RATE_PER_SECOND": "1000000",
        "WS_RATE_BURST": "1000000",
        "WS_MAX_CONNECTIONS_PER_USER": "1000000",
        "WS_MAX_CONNECTIONS_PER_IP": "1000000",
        "WS_MAX_SUBSCRIPTIONS": "1000",
        "REGISTRATIONS_PER_IP": "1000000",
        "LOG_LEVEL": "warning",
    }

    def __init__(
        self,
        workers: int,
        database_url: str,
        redis_url: str,
        run_dir: Path,
        users: int = 10,
        source: Path = ROOT,
        name: str = "livepost",
    ) -> None:
        self.name = name
        self.source = source
        self.workers = workers
        self.database_url = database_url
        self.redis_url = redis_url
        self.run_dir = run_dir
        self.users = users
        self.cluster: Any = None
        self._identities: list[tuple[str, Headers]] = []

    def start(self) -> None:
        from app.cli.cluster import Cluster  # the project's own deployment code

        ensure_database(self.database_url)
        tag = secrets.token_hex(4)
        env = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "JWT_SECRET": secrets.token_hex(32),
            "CHANNEL_PREFIX": f"bench{tag}",
            **self.LIMITS,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cluster = Cluster(
            self.workers, env, nginx=False, run_dir=self.run_dir, source=self.source
        )
        self.cluster.start(timeout=START_TIMEOUT)
        base = self.cluster.worker_urls[0]
        with httpx.Client(base_url=base, timeout=30) as http:
            for index in range(self.users):
                form = {"username": f"bench{tag}u{index}", "password": "bench-password-1"}
                http.post("/auth/register", json=form).raise_for_status()
                reply = http.post("/auth/token", data=form)
                reply.raise_for_status()
                self._identities.append((f"?token={reply.json()['access_token']}", ()))
        # argon2 hashing leaves its memory in the RSS of the worker that registered: start
        # every worker afresh so the RSS readings are the cost of serving only.
        self.restart()
        urls = self.cluster.worker_urls
        log(f"{self.name}: {self.workers} workers {urls}, logs in {self.run_dir}")

    def restart(self) -> None:
        # Same secret, database and ports: the users' tokens stay valid.
        self.cluster.stop()
        self.cluster.start(timeout=START_TIMEOUT)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def pids(self) -> list[int]:
        return [self.cluster.pid(index) for index in range(self.workers)]

    def worker_urls(self) -> list[str]:
        return [f"ws{url[4:]}/ws" for url in self.cluster.worker_urls]

    def identities(self) -> list[tuple[str, Headers]]:
        return self._identities

    def reset(self) -> None:
        # No RESTART IDENTITY: a worker remembers the versions of pks it has relayed, and a
        # reused pk would look like a stale event.
        run_sql(self.database_url, "TRUNCATE posts")


def checkout(revision: str, scratch: Path) -> tuple[str, Path]:
    """This repository's tree at revision, exported under scratch (reused): its short id and
    path. Its workers run on this checkout's virtualenv, so it must need no other packages."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", f"{revision}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    tree = scratch / f"livepost-{commit}"
    if not (tree / "app").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return commit, tree


class DcrfTarget(Target):
    """The DCRF + Django Channels social network in bench/baselines/dcrf_social, run as its
    README says (daphne workers on ports 8001..800W through its start_workers.sh, session
    cookies from bench_sessions)."""

    name = "dcrf"
    DB: ClassVar[dict[str, str]] = {
        "PGHOST": "127.0.0.1",
        "PGPORT": "5432",
        "PGUSER": "dcrf",
        "PGPASSWORD": "dcrf",
    }

    def __init__(
        self, workers: int, admin_url: str, redis_url: str, scratch: Path, users: int = 50
    ) -> None:
        self.workers = workers
        self.admin_url = admin_url
        self.redis_url = redis_url
        self.scratch = scratch
        self.users = users
        self.home = scratch / "dcrf_social"
        self.versions: dict[str, str] = {}
        self._identities: list[tuple[str, Headers]] = []
        self._started = False

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.DB,
            "PGDATABASE": "dcrf",
            "REDIS_URL": self.redis_url,
            "DJANGO_SETTINGS_MODULE": "socialnet.settings",
            "LOG_LEVEL": "WARNING",
        }

    def _manage(self, *args: str) -> None:
        subprocess.run(
            [str(self.home / ".venv" / "bin" / "python"), "manage.py", *args],
            cwd=self.home, env=self._env(), check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> None:
        self.home = copy_baseline("dcrf_social", self.scratch)
        python = ensure_venv(self.home / ".venv", self.home / "requirements.txt")
        self.versions = installed_versions(
            python,
            ["django", "channels", "channels-redis", "daphne", "djangochannelsrestframework"],
        )
        ensure_role(self.admin_url, "dcrf", "dcrf")
        ensure_database(self._dcrf_url(), owner="dcrf")
        self._manage("migrate", "-v", "0")
        (self.home / "run").mkdir(exist_ok=True)
        sessions = self.home / "run" / "sessions.json"
        self._manage("bench_sessions", str(self.users), "--out", str(sessions))
        self._identities = [
            ("", (("Cookie", f"sessionid={row['sessionid']}"),))
            for row in json.loads(sessions.read_text())
        ]
        self._start_workers()
        log(f"dcrf: {self.workers} daphne workers {self.worker_urls()} ({self.versions})")

    def _start_workers(self) -> None:
        self._clear_stale_pid_files()
        self._started = True  # from here on stop_workers.sh may have PIDs to stop
        subprocess.run(
            ["./start_workers.sh", str(self.workers), "daphne"],
            cwd=self.home, env=self._env(), check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def _clear_stale_pid_files(self) -> None:
        """stop_workers.sh kills whatever PID a file names: after a crash that may be an
        unrelated process by now, so keep only files naming a live daphne."""
        for pid_file in (self.home / "run").glob("worker-*.pid"):
            pid = pid_file.read_text().strip()
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                command = b""
            if b"daphne" not in command and b"uvicorn" not in command:
                pid_file.unlink()
        if any((self.home / "run").glob("worker-*.pid")):
            log("dcrf: stopping workers left over from an earlier run")
            subprocess.run(["./stop_workers.sh"], cwd=self.home, check=False,
                           stdout=subprocess.DEVNULL)  # fmt: skip

    def restart(self) -> None:
        self.stop()
        self._start_workers()

    def _dcrf_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.admin_url).set(database="dcrf").render_as_string(False)

    def stop(self) -> None:
        if self._started:
            subprocess.run(["./stop_workers.sh"], cwd=self.home, check=False,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            self._started = False

    def pids(self) -> list[int]:
        run = self.home / "run"
        return [int((run / f"worker-{8001 + i}.pid").read_text()) for i in range(self.workers)]

    def worker_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{8001 + i}/ws/" for i in range(self.workers)]

    def identities(self) -> list[tuple[str, Headers]]:
        return self._identities

    def reset(self) -> None:
        self._manage("bench_reset")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "versions": self.versions}


class RawTarget(Target):
    """The bare websockets relay in bench/baselines/raw_relay: one process, no database, no
    broker, anonymous."""

    name = "raw"
    PACKAGES: ClassVar[list[str]] = ["websockets", "uvloop"]  # the versions to record

    def __init__(self, scratch: Path) -> None:
        self.workers = 1
        self.scratch = scratch
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.versions: dict[str, str] = {}

    def start(self) -> None:
        from app.cli.cluster import free_port

        home = copy_baseline("raw_relay", self.scratch)
        python = ensure_venv(home / ".venv-raw", home / "requirements.txt")
        self.versions = installed_versions(python, self.PACKAGES)
        self.port = free_port()
        with open(home / "server.log", "ab") as output:
            self.process = subprocess.Popen(
                [str(python), "server.py", str(self.port)],
                cwd=home, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for_port(self.port, time.monotonic() + START_TIMEOUT, self.process)
        log(f"raw: relay on port {self.port} ({self.versions})")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def pids(self) -> list[int]:
        assert self.process is not None
        return [self.process.pid]

    def worker_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{self.port}/ws"]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "versions": self.versions}


class UrlTarget(Target):
    """A deployment somebody else runs: its worker URLs, PIDs and handshake headers."""

    def __init__(self, urls: list[str], pids: list[int], headers: Headers, name: str) -> None:
        self.name = name
        self.urls = urls
        self._pids = pids
        self.headers = headers
        self.workers = len(urls)

    def start(self) -> None:
        for pid in self._pids:
            if not Path(f"/proc/{pid}").exists():
                raise ProcessLookupError(f"no process {pid}")

    def stop(self) -> None:
        pass

    def restart(self) -> None:
        pass  # not ours to restart

    def pids(self) -> list[int]:
        return self._pids

    def worker_urls(self) -> list[str]:
        return self.urls

    def identities(self) -> list[tuple[str, Headers]]:
        return [("", self.headers)]
