#!/usr/bin/env bash
# The same no-op workload as Drover's benchmark, on Celery with a Redis broker and
# result backend, acks_late on. Installs Redis (Debian package) and Celery (a venv in
# .tools/) if they are missing, starts Redis and a Celery worker on free ports, and prints
# one JSON line per concurrency: {"in_flight", "count", "seconds", "per_second", "latency"}.
#
#   bench/peers/celery/run.sh [--tasks N] [--in-flight 1,16,256] [--concurrency C]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
tasks=2000
in_flight="1,16,256"
concurrency="${CELERY_CONCURRENCY:-$(nproc)}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tasks) tasks="$2"; shift 2 ;;
    --in-flight) in_flight="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
done

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq redis-server >&2
fi
venv="$root/.tools/celery-venv"
if [[ ! -x "$venv/bin/celery" ]]; then
  echo "installing celery into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "celery[redis]==5.5.3" >&2
fi

work="$(mktemp -d)"
port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

export CELERY_BROKER_URL="redis://127.0.0.1:$port/0"
export CELERY_RESULT_BACKEND="redis://127.0.0.1:$port/1"
cd "$here"
"$venv/bin/celery" -A noop worker --concurrency "$concurrency" --loglevel WARNING --without-gossip --without-mingle --without-heartbeat >"$work/worker.log" 2>&1 &
pids+=($!)
"$venv/bin/python" client.py --tasks "$tasks" --in-flight "$in_flight"
