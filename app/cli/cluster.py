"""`livepost cluster`: N uvicorn workers on loopback ports behind a local nginx.

The same topology as docker-compose.yml without Docker: one process per worker sharing
PostgreSQL and Redis, and nginx rendered from deploy/nginx.conf.template. The tests start
their multi-worker deployments with this class too.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings
from app.worker import uvicorn_command

ROOT = Path(__file__).resolve().parents[2]
_FIELDS = set(Settings.model_fields)
DEPLOY = ROOT / "deploy"
_VARIABLE = re.compile(r"\$\{(LIVEPOST_[A-Z_]+)\}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(template: Path, values: dict[str, str]) -> str:
    """Substitute ${LIVEPOST_*} only, as the nginx image's envsubst does with our variables."""
    return _VARIABLE.sub(lambda match: values[match.group(1)], template.read_text())


class Cluster:
    def __init__(
        self,
        workers: int,
        env: dict[str, str],
        *,
        worker_ports: list[int] | None = None,
        lb_port: int | None = None,
        nginx: bool = True,
        run_dir: Path | None = None,
        worker_env: dict[int, dict[str, str]] | None = None,
        source: Path = ROOT,
    ) -> None:
        """worker_env: more environment for single workers, by index (the tests give each
        worker its own way to Redis). source: the livepost tree the workers run (the benchmark
        runs an earlier revision beside this one)."""
        if not env.get("REDIS_URL"):
            raise ValueError("a cluster needs REDIS_URL: workers share events through Redis")
        self.env = {**os.environ, **env}
        self.worker_env = worker_env or {}
        self.source = source
        # The workers' settings: this process's environment with env on top, as they get it.
        overrides: dict[str, Any] = {k.lower(): v for k, v in env.items() if k.lower() in _FIELDS}
        self.settings = Settings(**overrides)
        self.worker_ports = worker_ports or [free_port() for _ in range(workers)]
        self.lb_port = (lb_port or free_port()) if nginx else None
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="livepost-cluster-"))
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.nginx: subprocess.Popen[bytes] | None = None

    @property
    def worker_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.worker_ports]

    @property
    def lb_url(self) -> str:
        assert self.lb_port is not None
        return f"http://127.0.0.1:{self.lb_port}"

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "app.cli.main", "migrate"],
            env=self.env,
            cwd=self.source,
            check=True,
        )

    def start(self, timeout: float = 30.0) -> None:
        self.migrate()
        for index in range(len(self.workers)):
            self.start_worker(index)
        if self.lb_port is not None:
            self._start_nginx()
        deadline = time.monotonic() + timeout
        for url in self.worker_urls + ([self.lb_url] if self.lb_port else []):
            self.wait_ready(url, deadline)

    def start_worker(self, index: int) -> None:
        # The child keeps its own copy of the log descriptor; ours closes right away.
        with open(self.run_dir / f"worker-{index}.log", "ab") as log:
            self.workers[index] = subprocess.Popen(
                uvicorn_command(self.settings, host="127.0.0.1", port=self.worker_ports[index]),
                env=self.env | self.worker_env.get(index, {}),
                cwd=self.source,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, url: str, deadline: float, path: str = "/readyz") -> None:
        worker = self.workers[self.worker_urls.index(url)] if url in self.worker_urls else None
        while True:
            if worker is not None and worker.poll() is not None:  # no use waiting any longer
                raise RuntimeError(
                    f"the worker at {url} exited ({worker.returncode}); logs in {self.run_dir}"
                )
            try:
                if httpx.get(url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}{path} not ready; logs in {self.run_dir}")
            time.sleep(0.05)

    def _start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        values = {
            "LIVEPOST_UPSTREAMS": "\n    ".join(
                f"server 127.0.0.1:{port};" for port in self.worker_ports
            ),
            "LIVEPOST_LISTEN": f"127.0.0.1:{self.lb_port}",
            "LIVEPOST_RUN_DIR": str(self.run_dir),
        }
        (self.run_dir / "livepost.conf").write_text(render(DEPLOY / "nginx.conf.template", values))
        main = self.run_dir / "nginx.conf"
        main.write_text(render(DEPLOY / "nginx-main.conf.template", values))
        with open(self.run_dir / "nginx.log", "ab") as log:
            self.nginx = subprocess.Popen(
                [nginx, "-p", str(self.run_dir), "-e", str(self.run_dir / "nginx-error.log"),
                 "-c", str(main)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def pid(self, index: int) -> int:
        process = self.workers[index]
        assert process is not None
        return process.pid

    def stop_worker(self, index: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        process = self.workers[index]
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.workers[index] = None

    def stop(self) -> None:
        for index in range(len(self.workers)):
            self.stop_worker(index)
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
        self.nginx = None

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
