"""`livepost cluster` keeps its workers running: one that dies is reported and restarted.

A worker that keeps dying right after it starts (a bad setting, a database that refuses it)
is restarted after a delay that doubles each time, up to MAX_DELAY, so it neither spins nor
floods the terminal; once a worker has stayed up for STABLE_AFTER, its next death starts
again from FIRST_DELAY.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import TextIO

from app.cli.cluster import Cluster

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
STABLE_AFTER = 30.0


def exit_status(returncode: int) -> str:
    """subprocess's returncode as an operator reads it."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class Supervisor:
    """Call `check` every so often: it notices dead workers and restarts them when due."""

    def __init__(self, cluster: Cluster, out: TextIO = sys.stderr) -> None:
        self.cluster = cluster
        self.out = out
        now = time.monotonic()
        count = len(cluster.workers)
        self.started_at = [now] * count
        self.delay = [FIRST_DELAY] * count
        self.restart_at: list[float | None] = [None] * count

    def check(self) -> None:
        now = time.monotonic()
        for index, process in enumerate(self.cluster.workers):
            due = self.restart_at[index]
            if due is not None:
                if now >= due:
                    self.restart_at[index] = None
                    self.started_at[index] = now
                    self.cluster.start_worker(index)
                    self._say(f"worker {index} restarted (pid {self.cluster.pid(index)})")
                continue
            if process is None:  # stopped on purpose
                continue
            returncode = process.poll()
            if returncode is None:
                continue
            if now - self.started_at[index] >= STABLE_AFTER:
                self.delay[index] = FIRST_DELAY
            delay = self.delay[index]
            self.delay[index] = min(delay * 2, MAX_DELAY)
            self.restart_at[index] = now + delay
            self._say(
                f"worker {index} ({self.cluster.worker_urls[index]}, pid {process.pid}) "
                f"died: {exit_status(returncode)}; restarting in {delay:g} s"
            )

    def _say(self, line: str) -> None:
        print(f"livepost cluster: {line}", file=self.out, flush=True)
