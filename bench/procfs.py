"""What the server processes cost, read from /proc (Linux) by PID."""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (utime + stime)."""
    with open(f"/proc/{pid}/stat") as handle:
        stat = handle.read()
    # comm (field 2) may contain spaces and parentheses: count fields after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) in kB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # a zombie has no VmRSS line


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def rss_by_pid(pids: list[int]) -> list[int]:
    return [rss_kb(pid) for pid in pids]
