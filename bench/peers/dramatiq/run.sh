#!/usr/bin/env bash
# The same no-op workload as Drover's benchmark, on Dramatiq with a Redis broker and the
# Results middleware on Redis. Installs Redis (Debian package) and Dramatiq (a venv in
# .tools/) if they are missing, starts Redis (append-only file, fsync every second) and
# `dramatiq --processes 2 --threads 8`, and prints JSON lines (bench/peers/measure.py):
# one per concurrency of client lanes, then one for draining a backlog.
#
#   bench/peers/dramatiq/run.sh [--tasks N] [--in-flight 1,16,256] [--drain 5000]
#                               [--submitters 16] [--processes 2] [--threads 8]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../lib.sh"
client_args=()
processes=2
threads=8
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tasks|--in-flight|--drain|--submitters) client_args+=("$1" "$2"); shift 2 ;;
    --processes) processes="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
done

ensure_redis
venv="$(ensure_venv dramatiq-venv 'dramatiq[redis]==1.17.1' dramatiq)"
start_redis "$venv"

export DRAMATIQ_BROKER_URL="redis://127.0.0.1:$port/0"
export DRAMATIQ_RESULT_BACKEND="redis://127.0.0.1:$port/1"
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
cd "$here"
"$venv/bin/dramatiq" noop --processes "$processes" --threads "$threads" >"$work/worker.log" 2>&1 &
pids+=($!)
"$venv/bin/python" client.py "${client_args[@]}"
