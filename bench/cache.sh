#!/usr/bin/env bash
# Cache hits at the cache's realistic sizes (5k and 50k answers, hits spread uniformly or by
# Zipf's law): up to three courier builds beside nginx `proxy_cache`, in one run (see
# bench/README.md and bench/cache.py). Installs what it needs (Debian packages: wrk, nginx-light,
# curl) and builds courier in release mode unless COURIER_BIN is given.
# Environment: COURIER_BIN, COURIER_BIN_B, COURIER_BIN_C, SIZES, DISTS, ROUNDS, SECONDS_PER_RUN.
source "$(dirname "$0")/common.sh"

need_pkg wrk wrk
need_pkg curl curl
need_pkg nginx nginx-light
[ -n "${COURIER_BIN:-}" ] || build_release
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
rmdir "$WORK"
exec python3 "$ROOT/bench/cache.py"
