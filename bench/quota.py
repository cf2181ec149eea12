#!/usr/bin/env python3
"""Issue 22: pacing a quota under 10x overload (called by bench/quota).

The simulator enforces a quota window of LIMIT requests per WINDOW seconds (1200/120s, aligned to
the Unix epoch) on top of a per-minute limit of 6000 (burst 50). courier has the same window and
rate (burst 5) with COURIER_QUOTA_PACING=even, its cache off, its counts in a state directory of
its own: its pace is LIMIT / WINDOW = 10 requests/s. At the start of a window, examples/loadgen.rs
offers OFFERED = 100 requests/s, each with a distinct body and X-Request-Timeout: REQUEST_TIMEOUT,
for WINDOW seconds: 10x the pace.

Every INTERVAL seconds courier's /metrics is scraped: the pace it exports for the window
(courier_quota_pace_requests_per_second) and its 429s by code (quota_exhausted: the quota's
refusals; budget_exhausted: the budget queue's). Afterwards the simulator's per-second arrivals
(GET /_sim/quotas) are summed per interval beside the pacing target (the pace at the interval's
start x INTERVAL). Printed: one Markdown row per interval, then the totals: received in the
window (at most LIMIT), quota overruns (the simulator's quota_refused: must be 0, else exit 1)
and the largest deviation from the target.

Environment: COURIER_BIN, LOADGEN, WINDOW (120), LIMIT (1200), INTERVAL (10), OFFERED (100),
REQUEST_TIMEOUT (2), CONNECTIONS (300). Only processes started here are stopped, by their pid.
"""
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
COURIER = os.environ.get("COURIER_BIN", os.path.join(TARGET_DIR, "release", "courier"))
LOADGEN = os.environ.get("LOADGEN", os.path.join(TARGET_DIR, "release", "examples", "loadgen"))
WINDOW = int(os.environ.get("WINDOW", "120"))
LIMIT = int(os.environ.get("LIMIT", "1200"))
INTERVAL = int(os.environ.get("INTERVAL", "10"))
OFFERED = float(os.environ.get("OFFERED", "100"))
REQUEST_TIMEOUT = os.environ.get("REQUEST_TIMEOUT", "2")
# Enough connections that each has a request in flight for at most REQUEST_TIMEOUT before its
# next one is due (CONNECTIONS / OFFERED seconds apart): the offered rate holds.
CONNECTIONS = int(os.environ.get("CONNECTIONS", "300"))
RATE_LIMIT, SIM_BURST, COURIER_BURST = 6000, 50, 5
# The time to be ready before a window starts; a start nearer than this waits for the next one.
LEAD_SECONDS = 3.0
# Scrapes come this long after an interval's start, so the window has rolled over first.
SCRAPE_OFFSET = 0.5
BODY = '{"data": {"input": "quota bench {n}", "format": "text"}}'
WORK = tempfile.mkdtemp(prefix="courier-bench-quota-")
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(name, argv, env=None):
    log = open(os.path.join(WORK, name + ".log"), "w")
    p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    PROCS.append(p)
    return p


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def wait_http(url):
    for _ in range(200):
        try:
            get(url)
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {url}")


def metrics(admin, window):
    """The pace courier exports for `window`, and its 429s so far: (pace, quota 429s, budget 429s)."""
    text = get(admin + "/metrics")

    def total(pattern):
        return sum(float(v) for v in re.findall(rf"^{pattern}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M))

    pace = re.search(rf'^courier_quota_pace_requests_per_second\{{window="{window}"\}} ([0-9.e+-]+)$', text, re.M)
    if not pace:
        raise SystemExit(f"courier exports no courier_quota_pace_requests_per_second{{window=\"{window}\"}}: "
                         f"is {COURIER} built with quota windows?")
    quota = sum(float(v) for v in re.findall(
        r'^courier_quota_refusals_total\{reason="(?:window_spent|client_max|reserved)"\} ([0-9.e+-]+)$', text, re.M))
    return float(pace.group(1)), quota, total("courier_budget_rejections_total")


def sleep_until(unix_s):
    while (left := unix_s - time.time()) > 0:
        time.sleep(min(left, 1.0))


def main():
    window = f"{WINDOW}s"
    if WINDOW % INTERVAL:
        raise SystemExit(f"WINDOW ({WINDOW}) must be a multiple of INTERVAL ({INTERVAL})")
    for what, path in (("COURIER_BIN", COURIER), ("LOADGEN", LOADGEN)):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"no executable at {path} ({what})")
    version = subprocess.run([COURIER, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    sim_port, port, admin_port = free_port(), free_port(), free_port()
    sim_base = f"http://127.0.0.1:{sim_port}"
    start("sim", [COURIER, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--workers", "1",
                  "--rate-limit", str(RATE_LIMIT), "--rate-burst", str(SIM_BURST), "--quota", f"{LIMIT}/{window}"])
    wait_http(sim_base + "/_sim/stats")
    state = os.path.join(WORK, "state")
    os.mkdir(state)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "EXTERNAL_API_BASE_URL": sim_base + "/v2", "EXTERNAL_API_KEY": "demo-api-key",
        "EXTERNAL_OAUTH_CLIENT_ID": "courier-demo", "EXTERNAL_OAUTH_CLIENT_SECRET": "demo-secret",
        "EXTERNAL_API_RATE_LIMIT": str(RATE_LIMIT), "EXTERNAL_API_RATE_BURST": str(COURIER_BURST),
        "EXTERNAL_API_QUOTAS": f"{LIMIT}/{window}", "COURIER_QUOTA_PACING": "even", "COURIER_STATE_DIR": state,
        "EXTERNAL_API_CACHE_TTL": "0", "COURIER_LISTEN": f"127.0.0.1:{port}",
        "COURIER_ADMIN_LISTEN": f"127.0.0.1:{admin_port}", "COURIER_WORKERS": "1", "COURIER_LOG_LEVEL": "warning",
    }
    courier = start("courier", [COURIER, "serve"], env=env)
    admin = f"http://127.0.0.1:{admin_port}"
    wait_http(admin + "/readyz")
    metrics(admin, window)  # fails early, with a clear line, on a build without quotas

    t0 = math.ceil((time.time() + LEAD_SECONDS) / WINDOW) * WINDOW
    print(f"{version}: waiting {t0 - time.time():.0f} s for a {window} window to start "
          f"({LIMIT}/{window} paced even, {OFFERED:g} requests/s offered)", flush=True)
    sleep_until(t0)
    load = subprocess.Popen(
        [LOADGEN, f"http://127.0.0.1:{port}/api/external/process", "--connections", str(CONNECTIONS),
         "--seconds", str(WINDOW), "--rate", str(OFFERED), "--method", "POST", "--body", BODY, "--unique",
         "--header", "Content-Type: application/json", "--header", f"X-Request-Timeout: {REQUEST_TIMEOUT}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    PROCS.append(load)
    intervals = WINDOW // INTERVAL
    scrapes = []
    for i in range(intervals + 1):
        sleep_until(t0 + i * INTERVAL + SCRAPE_OFFSET)
        scrapes.append(metrics(admin, window))
    out, _ = load.communicate(timeout=WINDOW + 60)
    offered = json.loads(out.strip().splitlines()[-1])
    quotas = json.loads(get(sim_base + "/_sim/quotas"))
    stats = json.loads(get(sim_base + "/_sim/stats"))
    courier.send_signal(signal.SIGTERM)
    courier.wait(timeout=40)

    arrivals = dict((int(s), n) for s, n in quotas["arrivals"])
    print()
    print(f"| interval (s) | upstream received | pacing target (pace × {INTERVAL} s) | deviation "
          f"| courier 429 quota_exhausted | courier 429 budget_exhausted |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    received_total = 0
    for i in range(intervals):
        received = sum(arrivals.get(s, 0) for s in range(t0 + i * INTERVAL, t0 + (i + 1) * INTERVAL))
        received_total += received
        pace, quota_before, budget_before = scrapes[i]
        _, quota_after, budget_after = scrapes[i + 1]
        target = pace * INTERVAL
        deviation = (received - target) / target if target > 0 else 0.0
        worst = max(worst, abs(deviation))
        print(f"| {i * INTERVAL}–{(i + 1) * INTERVAL} | {received} | {target:.1f} | {deviation:+.1%} "
              f"| {quota_after - quota_before:.0f} | {budget_after - budget_before:.0f} |")
    overruns = stats.get("quota_refused", 0)
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(offered["statuses"].items()))
    print()
    print(f"- received by the upstream in the window: **{received_total}** (limit {LIMIT})")
    print(f"- quota overruns (the simulator's quota_refused): **{overruns}**; its 429s in all: "
          f"{stats.get('rate_limited_total', 0)}")
    print(f"- largest deviation from the pacing target: **{worst:.1%}**")
    print(f"- offered: {offered['requests']} requests in {offered['seconds']:.1f} s ({offered['rps']:.1f}/s); "
          f"courier answered {statuses}; connection errors {offered['errors']}")
    if overruns or received_total > LIMIT:
        print(f"FAILED: the window was overrun ({overruns} quota refusals upstream, {received_total} received "
              f"for a limit of {LIMIT})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(WORK, ignore_errors=True)
    sys.exit(code)
