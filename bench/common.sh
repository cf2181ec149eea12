# Shared helpers of the bench scripts: install tools, build, start and stop processes, free ports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/courier}"
WORK="$(mktemp -d /tmp/courier-bench.XXXXXX)"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

# need_pkg COMMAND PACKAGE: installs the Debian package when the command is missing.
need_pkg() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2 (Debian package)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null \
      || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
  fi
}

build_release() {
  (cd "$ROOT" && cargo build --release --locked -q)
}

# free_port: a loopback port nobody listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL: waits (up to 10 s) until URL answers 200.
wait_http() {
  for _ in $(seq 200); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2
  return 1
}

# start NAME CMD...: starts a background process, logs to $WORK/NAME.log; its pid is in LAST_PID.
start() {
  local name="$1"; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wrk_run URL DURATION CONNECTIONS [env...]: runs wrk with the process script; prints its report.
wrk_run() {
  local url="$1" duration="$2" conns="$3"; shift 3
  env "$@" wrk -t1 -c"$conns" -d"$duration" --latency -s "$ROOT/bench/lua/process.lua" "$url"
}

# percentile REPORT P: the latency at percentile P (50, 99) in milliseconds.
percentile() {
  awk -v p="$2%" '$1 == p { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }; printf "%.3f", v }' <<<"$1"
}

rps() { awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$1"; }
