#!/usr/bin/env bash
# Measures courier's fast answers and its use of the upstream budget, against the simulator:
#  1. the time to reject an over-budget request (429), p50/p99, 64 connections;
#  2. the time to fail fast on an open breaker (503), p50/p99, 64 connections;
#  3. budget use under 10x overload: upstream requests sent / allowed by the limit.
# Reference measured in the same run: a trivial request to the same kind of actix-web server
# (the simulator's GET /_sim/faults), so figures are also given as ratios to it.
# Everything runs on loopback; each load lasts seconds.
source "$(dirname "$0")/common.sh"

need_pkg wrk wrk
need_pkg curl curl
build_release

DURATION="${DURATION:-10s}"
SIM_PORT=$(free_port); GW_PORT=$(free_port); ADMIN_PORT=$(free_port)
start sim "$BIN" simulate --listen "127.0.0.1:$SIM_PORT" --rate-limit 600 --rate-burst 20 --workers 1
wait_http "http://127.0.0.1:$SIM_PORT/_sim/stats"
start courier env \
  EXTERNAL_API_BASE_URL="http://127.0.0.1:$SIM_PORT/v2" EXTERNAL_API_KEY=demo-api-key \
  EXTERNAL_OAUTH_CLIENT_ID=courier-demo EXTERNAL_OAUTH_CLIENT_SECRET=demo-secret \
  EXTERNAL_API_RATE_LIMIT=600 EXTERNAL_API_RATE_BURST=5 EXTERNAL_API_CACHE_TTL=0 \
  COURIER_LISTEN="127.0.0.1:$GW_PORT" COURIER_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
  COURIER_WORKERS="${COURIER_WORKERS:-1}" COURIER_LOG_LEVEL=warning \
  COURIER_BREAKER_FAILURES=1000000 COURIER_BREAKER_MIN_REQUESTS=1000000 \
  "$BIN" serve
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
GW="http://127.0.0.1:$GW_PORT/api/external/process"

# expect REPORT STATUS: fails the run unless nearly every answer had STATUS, so a figure always
# measures the answer it names (with the cache on, the same body would be measured as cache hits).
expect() {
  python3 - "$1" "$2" <<'PY'
import re, sys
counts = dict(re.findall(r"(\d+|other)=(\d+)", sys.argv[1].split("statuses:")[1]))
total = sum(int(v) for v in counts.values())
share = int(counts.get(sys.argv[2], 0)) / max(total, 1)
if share < 0.95:
    sys.exit(f"expected nearly all answers to be {sys.argv[2]}, got {counts}")
PY
}

echo "== reference: simulator GET /_sim/faults"
REF=$(wrk -t1 -c64 -d"$DURATION" --latency "http://127.0.0.1:$SIM_PORT/_sim/faults")
echo "$REF" | grep -E "Requests/sec|50%|99%"

echo "== over-budget rejection (429)"
REJ=$(wrk_run "$GW" "$DURATION" 64 DEADLINE=0.05)
echo "$REJ" | grep -E "Requests/sec|50%|99%|statuses"
expect "$REJ" 429

echo "== open breaker fail-fast (503)"
curl -fsS -X POST "http://127.0.0.1:$ADMIN_PORT/admin/breaker" -H 'Content-Type: application/json' -d '{"mode":"open"}' >/dev/null
BRK=$(wrk_run "$GW" "$DURATION" 64)
echo "$BRK" | grep -E "Requests/sec|50%|99%|statuses"
expect "$BRK" 503
curl -fsS -X POST "http://127.0.0.1:$ADMIN_PORT/admin/breaker" -H 'Content-Type: application/json' -d '{"mode":"auto"}' >/dev/null

echo "== 10x overload for 20 s: ~100 requests/s offered (130 paced connections) against 10/s allowed"
sleep 3 # let the budget refill to its burst so every run starts alike
curl -fsS -X POST "http://127.0.0.1:$SIM_PORT/_sim/stats/reset" >/dev/null
START=$(date +%s.%N)
OVER=$(wrk_run "$GW" 20s 130 PACE_MS=1000 DEADLINE=2)
END=$(date +%s.%N)
echo "$OVER" | grep -E "Requests/sec|statuses"
STATS=$(curl -fsS "http://127.0.0.1:$SIM_PORT/_sim/stats")
SENT=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["process"]["total"])' "$STATS")
REFUSED=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["rate_limited_total"])' "$STATS")
# wrk's delay() also holds each connection's first request, so load starts one pace (1 s) in.
ALLOWED=$(python3 -c "print(round(5 + 10 * ($END - $START - 1.0)))")

echo
echo "| measure | p50 | p99 | ratio p99 / reference p99 |"
echo "|---|---|---|---|"
printf '| reference (simulator GET, 64 conns) | %s ms | %s ms | 1.0 |\n' "$(percentile "$REF" 50)" "$(percentile "$REF" 99)"
for row in "over-budget rejection (429):REJ" "open-breaker fail-fast (503):BRK"; do
  label="${row%%:*}"; var="${row##*:}"; report="${!var}"
  printf '| %s | %s ms | %s ms | %s |\n' "$label" "$(percentile "$report" 50)" "$(percentile "$report" 99)" \
    "$(python3 -c "print(round($(percentile "$report" 99) / max($(percentile "$REF" 99), 0.001), 2))")"
done
echo
echo "| 10x overload, 20 s | upstream requests sent | allowed (burst 5 + 10/s) | sent / allowed | upstream 429s |"
echo "|---|---|---|---|---|"
printf '| courier, 1 worker | %s | %s | %s | %s |\n' "$SENT" "$ALLOWED" "$(python3 -c "print(round($SENT / $ALLOWED, 3))")" "$REFUSED"
