#!/usr/bin/env bash
# Cache hits: courier against nginx set up as a caching reverse proxy (proxy_cache on POST,
# keyed by the body) in front of the same simulator, in one run, same connections (64), both
# with one worker. Then courier's memory (RSS) holding 100k cached answers of ~300 bytes.
source "$(dirname "$0")/common.sh"

need_pkg wrk wrk
need_pkg curl curl
need_pkg nginx nginx-light
build_release

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
SIM_PORT=$(free_port); GW_PORT=$(free_port); ADMIN_PORT=$(free_port); NGINX_PORT=$(free_port)
start sim "$BIN" simulate --listen "127.0.0.1:$SIM_PORT" --rate-limit 10000000 --rate-burst 1000000 --workers 1
wait_http "http://127.0.0.1:$SIM_PORT/_sim/stats"
start courier env \
  EXTERNAL_API_BASE_URL="http://127.0.0.1:$SIM_PORT/v2" EXTERNAL_API_KEY=demo-api-key \
  EXTERNAL_OAUTH_CLIENT_ID=courier-demo EXTERNAL_OAUTH_CLIENT_SECRET=demo-secret \
  EXTERNAL_API_RATE_LIMIT=10000000 EXTERNAL_API_RATE_BURST=1000000 EXTERNAL_API_CACHE_TTL=3600 \
  COURIER_CACHE_MAX_BYTES=$((512 << 20)) \
  COURIER_LISTEN="127.0.0.1:$GW_PORT" COURIER_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
  COURIER_WORKERS=1 COURIER_LOG_LEVEL=warning "$BIN" serve
COURIER_PID=$LAST_PID
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"

# nginx needs the upstream's credentials itself: one token, fetched now (valid an hour).
TOKEN=$(curl -fsS -X POST "http://127.0.0.1:$SIM_PORT/v2/oauth/token" \
  -d grant_type=client_credentials -d client_id=courier-demo -d client_secret=demo-secret \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
mkdir -p "$WORK/nginx/cache"
chmod a+rx "$WORK" && chmod -R a+rwx "$WORK/nginx"   # nginx workers run unprivileged
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $WORK/nginx/cache levels=1:2 keys_zone=api:64m max_size=512m inactive=60m use_temp_path=off;
  upstream sim { server 127.0.0.1:$SIM_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    client_body_buffer_size 64k;
    location /api/external/process {
      proxy_pass http://sim/v2/process;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $TOKEN";
      proxy_set_header X-API-Key demo-api-key;
      proxy_cache api;
      proxy_cache_methods POST;
      proxy_cache_key "\$request_uri|\$request_body";
      proxy_cache_valid 200 60m;
      proxy_ignore_headers Cache-Control Expires Set-Cookie;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
CONF
start nginx nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;'
sleep 0.5

GW="http://127.0.0.1:$GW_PORT/api/external/process"
NG="http://127.0.0.1:$NGINX_PORT/api/external/process"
BODY='{"data": {"input": "bench", "format": "text"}}'
for url in "$GW" "$NG"; do   # warm both caches with the one body the hit scenario sends
  for _ in 1 2; do curl -fsS -o /dev/null -X POST "$url" -H 'Content-Type: application/json' -d "$BODY"; done
done
curl -fsS -D - -o /dev/null -X POST "$GW" -H 'Content-Type: application/json' -d "$BODY" | grep -i '^x-cache:'
curl -fsS -D - -o /dev/null -X POST "$NG" -H 'Content-Type: application/json' -d "$BODY" | grep -i '^x-cache:'

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
NGINX_WORKER=$(pgrep -P "$(cat "$WORK/nginx/nginx.pid")" | head -1)
TICK=$(getconf CLK_TCK)
declare -A RPS P50 P99 CPU
for round in $(seq "$ROUNDS"); do
  for target in courier nginx; do
    if [ "$target" = courier ]; then url=$GW; pid=$COURIER_PID; else url=$NG; pid=$NGINX_WORKER; fi
    before=$(cpu_ticks "$pid")
    out=$(wrk_run "$url" "$DURATION" 64)
    after=$(cpu_ticks "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    RPS[$target]+="$(rps "$out") "
    P50[$target]+="$(percentile "$out" 50) "
    P99[$target]+="$(percentile "$out" 99) "
    CPU[$target]+="$(python3 -c "print(round(($after - $before) / $TICK / $reqs * 10000, 3))") "
    echo "round $round $target: $(rps "$out") req/s, p50 $(percentile "$out" 50) ms, p99 $(percentile "$out" 99) ms"
  done
done
med() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):g} ({min(v):g}–{max(v):g})")' $1; }
echo
echo "| cache hit, 64 connections, $ROUNDS rounds of $DURATION | req/s median (min–max) | p50 ms | p99 ms | CPU s per 10k requests |"
echo "|---|---|---|---|---|"
for target in courier nginx; do
  echo "| $target | $(med "${RPS[$target]}") | $(med "${P50[$target]}") | $(med "${P99[$target]}") | $(med "${CPU[$target]}") |"
done

echo
echo "== memory: filling courier's cache with 100k distinct answers"
RSS_BEFORE=$(awk '/VmRSS/ {print $2}' "/proc/$COURIER_PID/status")
entries=0
for run in $(seq 30); do
  RUN=$run wrk -t2 -c64 -d5s -s "$ROOT/bench/lua/unique.lua" "$GW" >/dev/null
  metrics=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics")
  entries=$(awk '/^courier_cache_entries / {print $2}' <<<"$metrics")
  [ "${entries%.*}" -ge 100000 ] && break
done
BYTES=$(awk '/^courier_cache_bytes / {print $2}' <<<"$metrics")
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$COURIER_PID/status")
ANSWER=$(curl -fsS -X POST "$GW" -H 'Content-Type: application/json' -d '{"data": {"input": "1-1-1-'"$(printf 'p%.0s' $(seq 200))"'"}}' | python3 -c 'import json,sys; print(len(json.dumps(json.load(sys.stdin)["result"], separators=(",",":"))))')
python3 - "$entries" "$BYTES" "$RSS" "$RSS_BEFORE" "$ANSWER" <<'PY'
import sys
entries, cache_bytes, rss_kib, rss0_kib, answer = (float(x) for x in sys.argv[1:])
answers_mib = entries * answer / 2**20
rss_mib = rss_kib / 1024
print()
print("| entries | answer size | answers held | courier_cache_bytes | RSS before | RSS after | RSS / (1.5 × answers + 32 MiB) |")
print("|---|---|---|---|---|---|---|")
print(f"| {entries:.0f} | {answer:.0f} B | {answers_mib:.1f} MiB | {cache_bytes / 2**20:.1f} MiB | {rss0_kib / 1024:.1f} MiB "
      f"| {rss_mib:.1f} MiB | {rss_mib / (1.5 * answers_mib + 32):.2f} |")
PY
