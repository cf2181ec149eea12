#!/usr/bin/env python3
"""Cache hits at the cache's realistic sizes (called by bench/cache.sh).

The upstream allows 1000 requests a minute, so at the default TTL (300 s) at most ~5k fresh
answers exist, ~5k-50k with stale-while-revalidate and stale-if-error on. Each target is filled
with KEYS distinct answers (~300 bytes each), then loaded with hits spread over all of them
(uniformly, or by Zipf's law), by wrk with one thread and 64 connections. Targets, each with one
worker, in front of one simulator, run in turn (A B C D, A B C D, ...) for several rounds:

  courier, courier B, courier C   up to three courier builds (COURIER_BIN, COURIER_BIN_B,
                                  COURIER_BIN_C), cache on, status store at 1000 entries
  nginx proxy_cache               POST cached by `$request_uri|$request_body`, keep-alive upstream

Reported: req/s, p50/p99, CPU seconds per 10k requests of the target process (user + system
from /proc), the share of courier's answers that were hits, and courier's RSS once filled.
Environment: SIZES (5000,50000), DISTS (uniform,zipf), ROUNDS (3), SECONDS_PER_RUN (6).
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BUILDS = [(label, path) for label, path in (
    ("courier", os.environ.get("COURIER_BIN", os.path.join(TARGET_DIR, "release", "courier"))),
    ("courier B", os.environ.get("COURIER_BIN_B")),
    ("courier C", os.environ.get("COURIER_BIN_C")),
) if path]
SIZES = [int(s) for s in os.environ.get("SIZES", "5000,50000").split(",")]
DISTS = os.environ.get("DISTS", "uniform,zipf").split(",")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = float(os.environ.get("SECONDS_PER_RUN", "6"))
LUA = os.path.join(ROOT, "bench", "lua", "keys.lua")
TICK = os.sysconf("SC_CLK_TCK")
WORK = tempfile.mkdtemp(prefix="courier-bench-cache-")
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(name, argv, env=None):
    log = open(os.path.join(WORK, name + ".log"), "w")
    p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    PROCS.append(p)
    return p


def wait_http(url):
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {url}")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metrics(admin):
    text = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("courier_cache_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wrk(url, keys, mode, seconds):
    """One wrk run; returns (requests, rps, p50 ms, p99 ms, non-2xx answers)."""
    env = dict(os.environ, KEYS=str(keys), MODE=mode)
    out = subprocess.run(["wrk", "-t1", "-c64", f"-d{seconds:g}s", "--latency", "-s", LUA, url],
                         env=env, capture_output=True, text=True, check=True).stdout

    def latency(p):
        m = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return requests, rps, latency(50), latency(99), int(bad.group(1)) if bad else 0


def nginx_workers(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    keep = []
    for child in out:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            cmdline = f.read()
        if b"worker process" in cmdline or b"cache manager" in cmdline:
            keep.append(int(child))
    return keep


def main():
    sim_port = free_port()
    simulator = BUILDS[0][1]
    start("sim", [simulator, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--workers", "1",
                  "--rate-limit", "10000000", "--rate-burst", "1000000"])
    sim_base = f"http://127.0.0.1:{sim_port}"
    wait_http(sim_base + "/_sim/stats")
    token = __import__("json").loads(urllib.request.urlopen(urllib.request.Request(
        sim_base + "/v2/oauth/token", method="POST",
        data=b"grant_type=client_credentials&client_id=courier-demo&client_secret=demo-secret")).read())["access_token"]

    targets = {}
    for label, binary in BUILDS:
        port, admin = free_port(), free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "EXTERNAL_API_BASE_URL": sim_base + "/v2", "EXTERNAL_API_KEY": "demo-api-key",
            "EXTERNAL_OAUTH_CLIENT_ID": "courier-demo", "EXTERNAL_OAUTH_CLIENT_SECRET": "demo-secret",
            "EXTERNAL_API_RATE_LIMIT": "10000000", "EXTERNAL_API_RATE_BURST": "1000000",
            "EXTERNAL_API_CACHE_TTL": "3600", "COURIER_CACHE_MAX_BYTES": str(512 << 20),
            "COURIER_JOB_MAX": "1000", "COURIER_LISTEN": f"127.0.0.1:{port}",
            "COURIER_ADMIN_LISTEN": f"127.0.0.1:{admin}", "COURIER_WORKERS": "1", "COURIER_LOG_LEVEL": "warning",
        }
        p = start(label.replace(" ", "-"), [binary, "serve"], env=env)
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        targets[label] = {"url": f"http://127.0.0.1:{port}/api/external/process", "admin": f"http://127.0.0.1:{admin}",
                          "pids": [p.pid], "pid": p.pid, "idle_rss": rss_mib(p.pid)}

    ndir = os.path.join(WORK, "nginx")
    os.makedirs(os.path.join(ndir, "cache"))
    os.chmod(WORK, 0o755)
    for d, _, _ in os.walk(ndir):
        os.chmod(d, 0o777)
    nginx_port = free_port()
    with open(os.path.join(ndir, "nginx.conf"), "w") as f:
        f.write(f"""
worker_processes 1;
pid {ndir}/nginx.pid;
error_log {ndir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  proxy_cache_path {ndir}/cache levels=1:2 keys_zone=api:64m max_size=2g inactive=60m use_temp_path=off;
  upstream sim {{ server 127.0.0.1:{sim_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    client_body_buffer_size 64k;
    location /api/external/process {{
      proxy_pass http://sim/v2/process;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {token}";
      proxy_set_header X-API-Key demo-api-key;
      proxy_cache api;
      proxy_cache_methods POST;
      proxy_cache_key "$request_uri|$request_body";
      proxy_cache_valid 200 60m;
      proxy_ignore_headers Cache-Control Expires Set-Cookie;
    }}
  }}
}}
""")
    nginx = start("nginx", ["nginx", "-c", os.path.join(ndir, "nginx.conf"), "-g", "daemon off;"])
    time.sleep(0.5)
    targets["nginx proxy_cache"] = {"url": f"http://127.0.0.1:{nginx_port}/api/external/process",
                                    "pids": nginx_workers(nginx.pid)}

    def held(name):
        """Answers the target holds now."""
        if "admin" in targets[name]:
            return metrics(targets[name]["admin"]).get("courier_cache_entries", 0)
        return sum(len(files) for _, _, files in os.walk(os.path.join(ndir, "cache")))

    results, memory = {}, []
    for keys in SIZES:
        for name, t in targets.items():
            for _ in range(30):
                if held(name) >= keys:
                    break
                wrk(t["url"], keys, "seq", max(1, round(keys / 10000)))
            else:
                raise SystemExit(f"{name} did not fill to {keys} answers")
            if "admin" in t:
                m = metrics(t["admin"])
                memory.append((name, keys, m["courier_cache_entries"], m["courier_cache_bytes"], t["idle_rss"],
                               rss_mib(t["pid"])))
        print(f"filled with {keys} answers", flush=True)
        for dist in DISTS:
            for rnd in range(ROUNDS):
                for name, t in targets.items():
                    hits_before = metrics(t["admin"])['courier_cache_lookups_total{result="hit"}'] if "admin" in t else 0
                    cpu_before = cpu_seconds(t["pids"])
                    requests, rps, p50, p99, bad = wrk(t["url"], keys, dist, SECONDS)
                    cpu = (cpu_seconds(t["pids"]) - cpu_before) * 10000 / max(requests, 1)
                    hits = None
                    if "admin" in t:
                        hits = (metrics(t["admin"])['courier_cache_lookups_total{result="hit"}'] - hits_before) / max(requests, 1)
                    results.setdefault((keys, dist), {}).setdefault(name, []).append((rps, p50, p99, cpu, hits, bad))
                    print(f"  {keys} {dist:<8} round {rnd + 1} {name:<18} {rps:9.0f} req/s  p50 {p50:.3f}  p99 {p99:.3f} ms"
                          f"  cpu/10k {cpu:.3f} s  hits {'' if hits is None else f'{hits:.3f}'}  non-2xx {bad}", flush=True)
    report(results, memory)


def report(results, memory):
    print()
    print(f"Machine: {os.cpu_count()} cores; {ROUNDS} rounds of {SECONDS:g} s per target, 64 connections, "
          "one worker per target.")
    for (keys, dist), by_target in results.items():
        print()
        print(f"### hits over {keys} answers, {dist}")
        print()
        print("| target | req/s median (min–max) | p50 ms | p99 ms | CPU s / 10k req median (min–max) | hits | non-2xx |")
        print("|---|---|---|---|---|---|---|")
        for name, runs in by_target.items():
            rps = [r[0] for r in runs]
            cpu = [r[3] for r in runs]
            hits = [r[4] for r in runs if r[4] is not None]
            print(f"| {name} | {statistics.median(rps):.0f} ({min(rps):.0f}–{max(rps):.0f}) "
                  f"| {statistics.median([r[1] for r in runs]):.3f} | {statistics.median([r[2] for r in runs]):.3f} "
                  f"| {statistics.median(cpu):.3f} ({min(cpu):.3f}–{max(cpu):.3f}) "
                  f"| {f'{min(hits):.3f}' if hits else '—'} | {sum(r[5] for r in runs)} |")
    print()
    print("### memory once filled (status store at 1000 entries)")
    print()
    print("| target | answers | courier_cache_entries | courier_cache_bytes MiB | RSS idle MiB | RSS filled MiB "
          "| RSS added per answer |")
    print("|---|---|---|---|---|---|---|")
    for name, keys, entries, cache_bytes, idle, filled in memory:
        print(f"| {name} | {keys} | {entries:.0f} | {cache_bytes / 2**20:.1f} | {idle:.1f} | {filled:.1f} "
              f"| {(filled - idle) * 2**20 / max(entries, 1):.0f} B |")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in PROCS:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(WORK, ignore_errors=True)
