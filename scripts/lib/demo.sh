# Sourced by scripts/contract-fuzz and scripts/generated-client: builds courier and starts
# `courier demo` on free loopback ports with one client key, in a clean environment, and waits
# (bounded) until it is ready. Stops it and removes the work directory on exit.
#
#   start_demo PYTHON [demo flags...]
#
# PYTHON runs the readiness wait (any python3). Sets: work (a temporary directory), pid,
# gateway, admin and simulator (host:port each), key (the client key to send as a Bearer token).
# Needs `fail MESSAGE` defined by the caller.

root=$(pwd)
bin="${CARGO_TARGET_DIR:-target}/debug/courier"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac

work=$(mktemp -d)
pid=
stop_demo() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop_demo EXIT

start_demo() {
  local python=$1
  shift
  cargo build --locked --bin courier
  # One client with a fresh key, so requests without it are refused with 401.
  key="key-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  printf '[[client]]\nname = "scripted"\nkey_sha256 = "%s"\n' \
    "$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)" >"$work/clients.toml"
  # A clean environment: nothing of the caller's EXTERNAL_API_* / COURIER_* leaks in.
  env -i PATH="$PATH" COURIER_CLIENTS_FILE="$work/clients.toml" COURIER_LOG_LEVEL=warn \
    "$bin" demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --sim-listen 127.0.0.1:0 "$@" \
    >"$work/banner" 2>"$work/courier.log" &
  pid=$!
  # The demo prints its real addresses once every listener is bound; then /readyz says when a
  # token is held.
  "$python" - "$work/banner" "$pid" <<'PY' >"$work/addresses" || fail "courier did not become ready: $(tail -5 "$work/courier.log")"
import os, re, sys, time, urllib.request
banner, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    os.kill(pid, 0)  # raises if courier exited
    text = open(banner).read()
    found = [re.search(rf"{name}:\s+http://(\S+?)/", text) for name in ("gateway", "admin", "simulator")]
    if all(found):
        gateway, admin, simulator = (m.group(1) for m in found)
        try:
            if urllib.request.urlopen(f"http://{admin}/readyz", timeout=2).status == 200:
                print(gateway, admin, simulator)
                sys.exit(0)
        except OSError:
            pass
    time.sleep(0.1)
sys.exit(1)
PY
  read -r gateway admin simulator <"$work/addresses"
}

# Fails when courier panicked or exited while the caller used it.
check_demo_survived() {
  if grep -q "panicked" "$work/courier.log"; then
    grep -m5 -A3 "panicked" "$work/courier.log" >&2
    fail "courier panicked (see above)"
  fi
  kill -0 "$pid" 2>/dev/null || fail "courier exited: $(tail -5 "$work/courier.log")"
}
