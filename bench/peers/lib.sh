# Shared by the peers' run.sh: Redis and a pinned venv, installed when missing, and a
# Redis on a free port with the durability the peers are measured with. Source it, then:
#
#   ensure_redis
#   venv="$(ensure_venv NAME 'package[extra]==x.y.z' COMMAND)"
#   start_redis "$venv"            # sets $port and $work; stops everything on exit
#
# Redis keeps an append-only file fsynced every second (appendonly yes, appendfsync
# everysec): an acknowledged job survives a Redis crash except for the last second, the
# durability closest to JetStream's file store, which Drover uses.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pids=()

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq redis-server >&2
  fi
}

# Prints the venv's path, creating it with `spec` when `command` is not in it yet.
ensure_venv() {
  local name="$1" spec="$2" command="$3"
  local venv="$repo_root/.tools/$name"
  if [[ ! -x "$venv/bin/$command" ]]; then
    echo "installing $spec into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$spec" >&2
  fi
  echo "$venv"
}

peers_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

start_redis() {
  local venv="$1"
  work="$(mktemp -d)"
  trap peers_cleanup EXIT
  port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  redis-server --port "$port" --bind 127.0.0.1 --save "" \
    --appendonly yes --appendfsync everysec --dir "$work" >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis-server did not start:" >&2
  cat "$work/redis.log" >&2
  return 1
}
