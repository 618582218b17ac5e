#!/usr/bin/env bash
# Stop the workers start_workers.sh started (only the PIDs it recorded in run/), and wait for
# them to exit so that the next start can bind the same ports: a daphne holding a thousand
# sockets can take seconds to go, and while it still listens a new worker fails to bind and
# the dying one would answer the next run. After 10 s, SIGKILL.
cd "$(dirname "$0")"
pids=()
for file in run/worker-*.pid; do
  [ -e "$file" ] || continue
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    echo "stopped $pid"
    pids+=("$pid")
  fi
  rm -f "$file"
done
for pid in "${pids[@]}"; do
  for _ in $(seq 1 100); do
    [ -e "/proc/$pid" ] || break
    sleep 0.1
  done
  if [ -e "/proc/$pid" ]; then
    kill -9 "$pid" 2>/dev/null
    echo "killed -9 $pid"
  fi
done
