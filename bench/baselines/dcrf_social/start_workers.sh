#!/usr/bin/env bash
# start_workers.sh N [daphne|uvicorn]: N worker processes of the application, one per port,
# on 127.0.0.1:8001..800N. Environment: LAYER=redis|pubsub (settings.py), VENV (default .venv,
# relative to this folder). PIDs go to run/worker-<port>.pid, output is appended to
# run/worker-<port>.log. stop_workers.sh stops them.
set -euo pipefail
N=${1:-1}
SERVER=${2:-${SERVER:-daphne}}
VENV=${VENV:-.venv}
cd "$(dirname "$0")"
mkdir -p run
ulimit -n 20000 2>/dev/null || true  # thousands of sockets per worker
export DJANGO_SETTINGS_MODULE=socialnet.settings

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for i in $(seq 1 "$N"); do
  port=$((8000 + i))
  if listening "$port"; then
    echo "port $port already in use; run stop_workers.sh first" >&2
    exit 1
  fi
  echo "=== $(date -u +%FT%TZ) start $SERVER port $port LAYER=${LAYER:-redis}" >>"run/worker-$port.log"
  if [ "$SERVER" = uvicorn ]; then
    nohup "$VENV/bin/uvicorn" socialnet.asgi:application --host 127.0.0.1 --port "$port" \
      --loop uvloop --ws websockets --log-level warning --no-access-log \
      >>"run/worker-$port.log" 2>&1 &
  else
    nohup "$VENV/bin/daphne" -b 127.0.0.1 -p "$port" socialnet.asgi:application -v 0 \
      >>"run/worker-$port.log" 2>&1 &
  fi
  echo $! >"run/worker-$port.pid"
done

# Up to 10 s each for the workers to listen; a worker that died is an error.
for i in $(seq 1 "$N"); do
  port=$((8000 + i))
  for _ in $(seq 1 100); do
    listening "$port" && break
    sleep 0.1
  done
  pid=$(cat "run/worker-$port.pid")
  if [ ! -e "/proc/$pid" ]; then
    echo "worker $port (pid $pid) died at start; see run/worker-$port.log" >&2
    exit 1
  fi
  echo "worker $port pid $pid"
done
