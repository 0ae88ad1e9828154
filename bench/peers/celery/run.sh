#!/usr/bin/env bash
# The same no-op workload as Drover's benchmark, on Celery with a Redis broker and
# result backend, acks_late on. Installs Redis (Debian package) and Celery (a venv in
# .tools/) if they are missing, starts Redis (append-only file, fsync every second) and a
# Celery worker on free ports, and prints JSON lines (bench/peers/measure.py): one per
# concurrency of client lanes, then one for draining a backlog.
#
#   bench/peers/celery/run.sh [--tasks N] [--in-flight 1,16,256] [--drain 5000]
#                             [--submitters 16] [--concurrency C]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../lib.sh"
client_args=()
concurrency="${CELERY_CONCURRENCY:-$(nproc)}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tasks|--in-flight|--drain|--submitters) client_args+=("$1" "$2"); shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
done

ensure_redis
venv="$(ensure_venv celery-venv 'celery[redis]==5.5.3' celery)"
start_redis "$venv"

export CELERY_BROKER_URL="redis://127.0.0.1:$port/0"
export CELERY_RESULT_BACKEND="redis://127.0.0.1:$port/1"
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
cd "$here"
"$venv/bin/celery" -A noop worker --concurrency "$concurrency" --loglevel WARNING --without-gossip --without-mingle --without-heartbeat >"$work/worker.log" 2>&1 &
pids+=($!)
"$venv/bin/python" client.py "${client_args[@]}"
