#!/usr/bin/env bash
# The cost of shared mode: courier without Redis (local) vs with Redis (shared budget, shared
# token, second-level cache), on the same machine in one run: requests/s and p50/p99 of an
# over-budget rejection (429) and of a cache hit, 64 connections, interleaved rounds.
# COURIER_BIN_B: another build, run shared on the same Redis as the mode "shared-B", so a change
# to the Redis path is measured beside the build before it in the same run.
source "$(dirname "$0")/common.sh"

need_pkg wrk wrk
need_pkg curl curl
need_pkg redis-server redis-server
build_release

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
SIM_PORT=$(free_port); REDIS_PORT=$(free_port)
start sim "$BIN" simulate --listen "127.0.0.1:$SIM_PORT" --rate-limit 600 --rate-burst 20 --workers 1
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
wait_http "http://127.0.0.1:$SIM_PORT/_sim/stats"
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

MODES=(local shared)
[ -n "${COURIER_BIN_B:-}" ] && MODES+=(shared-B)
declare -A GW ADMIN PID
for mode in "${MODES[@]}"; do
  GW[$mode]=$(free_port); ADMIN[$mode]=$(free_port)
  extra=()
  bin=$BIN
  [ "$mode" != local ] && extra=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT")
  [ "$mode" = shared-B ] && bin=$COURIER_BIN_B
  start "courier-$mode" env \
    EXTERNAL_API_BASE_URL="http://127.0.0.1:$SIM_PORT/v2" EXTERNAL_API_KEY=demo-api-key \
    EXTERNAL_OAUTH_CLIENT_ID=courier-demo EXTERNAL_OAUTH_CLIENT_SECRET=demo-secret \
    EXTERNAL_API_RATE_LIMIT=600 EXTERNAL_API_RATE_BURST=5 EXTERNAL_API_CACHE_TTL=3600 \
    COURIER_LISTEN="127.0.0.1:${GW[$mode]}" COURIER_ADMIN_LISTEN="127.0.0.1:${ADMIN[$mode]}" \
    COURIER_WORKERS=1 COURIER_LOG_LEVEL=warning "${extra[@]}" "$bin" serve
  PID[$mode]=$LAST_PID
  wait_http "http://127.0.0.1:${ADMIN[$mode]}/readyz"
  # Warm the one answer the hit scenario asks for.
  for _ in 1 2; do
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:${GW[$mode]}/api/external/process" \
      -H 'Content-Type: application/json' -d '{"data": {"input": "bench", "format": "text"}}'
  done
done

declare -A RPS P50 P99
for round in $(seq "$ROUNDS"); do
  for scenario in hit reject; do
    for mode in "${MODES[@]}"; do
      url="http://127.0.0.1:${GW[$mode]}/api/external/process"
      if [ "$scenario" = hit ]; then
        out=$(wrk_run "$url" "$DURATION" 64)
      else
        # Distinct bodies miss the cache and need a permit: nearly all are refused at once.
        out=$(RUN="r$round$mode" DEADLINE=0.05 wrk -t1 -c64 -d"$DURATION" --latency -s "$ROOT/bench/lua/unique.lua" "$url")
      fi
      key="$scenario/$mode"
      RPS[$key]+="$(rps "$out") "; P50[$key]+="$(percentile "$out" 50) "; P99[$key]+="$(percentile "$out" 99) "
      echo "round $round $key: $(rps "$out") req/s, p50 $(percentile "$out" 50) ms, p99 $(percentile "$out" 99) ms"
    done
  done
done
med() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):g} ({min(v):g}–{max(v):g})")' $1; }
ratio() { python3 -c 'import statistics,sys; a=[float(x) for x in sys.argv[1].split()]; b=[float(x) for x in sys.argv[2].split()]; print(round(statistics.median(b)/statistics.median(a), 2))' "$1" "$2"; }
echo
echo "| scenario (64 connections, $ROUNDS rounds of $DURATION) | mode | req/s median (min–max) | p50 ms | p99 ms | shared / local req/s | shared / local p99 |"
echo "|---|---|---|---|---|---|---|"
for scenario in hit reject; do
  for mode in "${MODES[@]}"; do
    key="$scenario/$mode"
    r="—"; p="—"
    [ "$mode" != local ] && r=$(ratio "${RPS[$scenario/local]}" "${RPS[$key]}") && p=$(ratio "${P99[$scenario/local]}" "${P99[$key]}")
    echo "| $scenario | $mode | $(med "${RPS[$key]}") | $(med "${P50[$key]}") | $(med "${P99[$key]}") | $r | $p |"
  done
done
