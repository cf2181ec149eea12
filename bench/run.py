#!/usr/bin/env python3
"""courier beside nginx and HAProxy on the same work, in one run (called by bench/run).

Targets (all on loopback, one worker each, per-request logging off for all):
  direct         the simulator itself (the common upstream), with the upstream's credentials
  courier        courier serve (cache off for pass-through, on for hits)
  nginx          nginx reverse proxy with upstream keep-alive (and proxy_cache for hits)
  haproxy        HAProxy with connection reuse
  floor          examples/floor.rs: bare actix-web (+ awc for pass-through) with none of courier's
                 work, the floor of courier's own stack (a reference, like nginx's fixed 429)
With QUOTAS (e.g. "100000000/day, 3000000000/month"), extra pass-through and cache-hit couriers
count every upstream attempt in those quota windows (embedded store, a state file in the run's
temporary directory): the cost of the quota stage on the request path.
With TRACE_RATIOS (e.g. 1.0,0.01), extra pass-through and cache-hit couriers trace at each ratio,
exporting to bench/otlp_sink.py (its own process, on loopback), and the spans they exported,
failed and dropped are reported per 10k requests.
The tls part (PARTS=tls) measures the cost of TLS on the gateway listener on cache hits (so
that the connection, not the upstream, is the work): plain HTTP and HTTPS, each with keep-alive
connections and with a new connection per request (`Connection: close`; the latency includes
connecting and the handshake), HTTPS both with session resumption and with full handshakes. The
certificates (ECDSA P-256, a CA and a server certificate for 127.0.0.1) are made with openssl.
Each scenario runs every target in turn (A B C D, A B C D, ...) for several rounds; figures are
medians with min-max. CPU is the target process's own user+system time from /proc.
"""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
COURIER = os.environ.get("COURIER_BIN", os.path.join(TARGET_DIR, "release", "courier"))
# A second build measured beside the first in the same run ("courier B"), for before/after.
COURIER_B = os.environ.get("COURIER_BIN_B")
LOADGEN = os.path.join(TARGET_DIR, "release", "examples", "loadgen")
FLOOR = os.path.join(TARGET_DIR, "release", "examples", "floor")
SECONDS = float(os.environ.get("SECONDS_PER_RUN", "6"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
# Which parts to run (all by default): pass, steady, cache, latency, reject, breaker, tls, memory.
PARTS = set(os.environ.get("PARTS", "pass,steady,cache,latency,reject,breaker,tls,memory").split(","))
# The fixed rate of the "steady" pass-through: a quarter of what courier serves in a closed loop
# here, so that the two cores are not saturated and latency is not queueing.
STEADY_RATE = 4000
# The memory part: the cache's realistic sizes, and the byte bound it is filled past.
MEMORY_SIZES = [int(n) for n in os.environ.get("MEMORY_SIZES", "5000,50000").split(",")]
MEMORY_BOUND_MIB = int(os.environ.get("MEMORY_BOUND_MIB", "64"))
# Sampling ratios at which to measure couriers with tracing on (none by default: an unchanged run).
TRACE_RATIOS = [r.strip() for r in os.environ.get("TRACE_RATIOS", "").split(",") if r.strip()]
# Quota windows for the extra quota couriers (none by default: an unchanged run).
QUOTAS = os.environ.get("QUOTAS", "").strip()
# After a traced run, spans still queued are exported within the batch delay (5 s by default):
# the counters are read (and the CPU counted) once they have not moved for longer than that.
TRACE_SETTLE_SECONDS = 6
if os.environ.get("PHASES") == "memory":
    PARTS = {"memory"}
CONNS = 64
TICK = os.sysconf("SC_CLK_TCK")
BODY = '{"data": {"input": "bench", "format": "text"}}'
WORK = tempfile.mkdtemp(prefix="courier-bench-")
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


def wait_http(url, method="GET"):
    for _ in range(200):
        try:
            urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=1)
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {url}")


def post(url, body, headers=None):
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def cpu_seconds(pids):
    """User and system CPU seconds of these processes so far."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / TICK, system / TICK


def peak_rss_mib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0


def nginx_workers(pid):
    """nginx's worker and cache manager (not the cache loader, which exits after a minute)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    keep = []
    for child in out:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"worker process" in cmdline or b"cache manager" in cmdline:
            keep.append(int(child))
    return keep


def trace_spans(admin):
    """courier_trace_spans_total by result from a courier's /metrics; None without that metric."""
    text = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("courier_trace_spans_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('result="', 1)[1].split('"', 1)[0]] = float(value)
    return found or None


def settled_trace_spans(admin):
    """The span counters once they stop moving (bounded: at most 30 s)."""
    last, still, deadline = trace_spans(admin), time.monotonic(), time.monotonic() + 30
    while last is not None and time.monotonic() - still < TRACE_SETTLE_SECONDS and time.monotonic() < deadline:
        time.sleep(0.5)
        now = trace_spans(admin)
        if now != last:
            last, still = now, time.monotonic()
    return last


def loadgen(url, headers, rate=0, seconds=SECONDS, body=BODY, unique=False, extra=()):
    argv = [LOADGEN, url, "--connections", str(CONNS), "--seconds", str(seconds), "--method", "POST", "--body", body]
    argv += list(extra)
    for h in headers:
        argv += ["--header", h]
    if rate:
        argv += ["--rate", str(rate)]
    if unique:
        argv.append("--unique")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def make_certificates():
    """A CA and a server certificate for 127.0.0.1 and localhost (ECDSA P-256), made with openssl:
    (CA file, certificate file, key file)."""
    d = os.path.join(WORK, "tls")
    os.makedirs(d)
    ca, ca_key, cert, key, csr = (os.path.join(d, n) for n in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run = lambda argv: subprocess.run(argv, check=True, capture_output=True)
    run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=courier bench CA"])
    run(["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"])
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext])
    return ca, cert, key


def main():
    sim_port = free_port()
    sim = start("sim", [COURIER, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--workers", "1",
                        "--rate-limit", "10000000", "--rate-burst", "1000000"])
    sim_base = f"http://127.0.0.1:{sim_port}"
    wait_http(sim_base + "/_sim/stats")
    token = json.loads(urllib.request.urlopen(urllib.request.Request(
        sim_base + "/v2/oauth/token", method="POST",
        data=b"grant_type=client_credentials&client_id=courier-demo&client_secret=demo-secret")).read())["access_token"]
    upstream_headers = ["Content-Type: application/json", f"Authorization: Bearer {token}", "X-API-Key: demo-api-key"]
    json_header = ["Content-Type: application/json"]

    def courier(name, extra, binary=COURIER):
        port, admin = free_port(), free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "EXTERNAL_API_BASE_URL": sim_base + "/v2", "EXTERNAL_API_KEY": "demo-api-key",
            "EXTERNAL_OAUTH_CLIENT_ID": "courier-demo", "EXTERNAL_OAUTH_CLIENT_SECRET": "demo-secret",
            "EXTERNAL_API_RATE_LIMIT": "10000000", "EXTERNAL_API_RATE_BURST": "1000000",
            "EXTERNAL_API_CACHE_TTL": "0", "COURIER_LISTEN": f"127.0.0.1:{port}",
            "COURIER_ADMIN_LISTEN": f"127.0.0.1:{admin}", "COURIER_WORKERS": "1",
            "COURIER_LOG_LEVEL": "warning",
        }
        env.update(extra)
        p = start(name, [binary, "serve"], env=env)
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        return p, f"http://127.0.0.1:{port}/api/external/process", f"http://127.0.0.1:{admin}"

    pass_proc, pass_url, pass_admin = courier("courier-pass", {})
    cache_proc, cache_url, cache_admin = courier("courier-cache", {"EXTERNAL_API_CACHE_TTL": "3600"})
    tight_proc, tight_url, _ = courier("courier-tight", {"EXTERNAL_API_RATE_LIMIT": "60", "EXTERNAL_API_RATE_BURST": "1"})

    nginx_proxy, nginx_cache, nginx_fixed = free_port(), free_port(), free_port()
    ndir = os.path.join(WORK, "nginx")
    os.makedirs(os.path.join(ndir, "cache"))
    os.chmod(WORK, 0o755)
    for d, _, _ in os.walk(ndir):
        os.chmod(d, 0o777)
    proxy_common = f"""
      proxy_pass http://sim/v2/process;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {token}";
      proxy_set_header X-API-Key demo-api-key;"""
    with open(os.path.join(ndir, "nginx.conf"), "w") as f:
        f.write(f"""
worker_processes 1;
pid {ndir}/nginx.pid;
error_log {ndir}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  proxy_cache_path {ndir}/cache levels=1:2 keys_zone=api:64m max_size=512m inactive=60m use_temp_path=off;
  upstream sim {{ server 127.0.0.1:{sim_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_proxy};
    location /api/external/process {{ {proxy_common} }}
  }}
  server {{
    listen 127.0.0.1:{nginx_fixed};
    location /api/external/process {{
      default_type application/json;
      return 429 '{{"success":false,"error":{{"code":"budget_exhausted","message":"reference","retryable":true}}}}';
    }}
  }}
  server {{
    listen 127.0.0.1:{nginx_cache};
    client_body_buffer_size 64k;
    location /api/external/process {{ {proxy_common}
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
    haproxy_port = free_port()
    with open(os.path.join(WORK, "haproxy.cfg"), "w") as f:
        f.write(f"""
global
  nbthread 1
  maxconn 5000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend api
  bind 127.0.0.1:{haproxy_port}
  default_backend sim
backend sim
  http-request set-path /v2/process
  http-request set-header Authorization "Bearer {token}"
  http-request set-header X-API-Key demo-api-key
  server s1 127.0.0.1:{sim_port} maxconn 64
""")
    haproxy = start("haproxy", ["haproxy", "-f", os.path.join(WORK, "haproxy.cfg"), "-db"])
    nginx_url = f"http://127.0.0.1:{nginx_proxy}/api/external/process"
    nginx_cache_url = f"http://127.0.0.1:{nginx_cache}/api/external/process"
    haproxy_url = f"http://127.0.0.1:{haproxy_port}/api/external/process"
    time.sleep(0.5)
    workers = nginx_workers(nginx.pid)

    targets = {
        "direct": (sim_base + "/v2/process", upstream_headers, [sim.pid]),
        "courier": (pass_url, json_header, [pass_proc.pid]),
        "nginx": (nginx_url, json_header, workers),
        "haproxy": (haproxy_url, json_header, [haproxy.pid]),
        "courier (cache)": (cache_url, json_header, [cache_proc.pid]),
        "nginx proxy_cache": (nginx_cache_url, json_header, workers),
        "nginx fixed 429 (reference)": (f"http://127.0.0.1:{nginx_fixed}/api/external/process", json_header, workers),
    }
    for name in ("courier (cache)", "nginx proxy_cache"):
        for _ in range(2):
            answer = post(targets[name][0], BODY, {"Content-Type": "application/json"})
            if name == "courier (cache)":
                with open(os.path.join(WORK, "answer.json"), "wb") as f:
                    f.write(answer)
    # The floor answers from memory with courier's own cache-hit answer, byte for byte.
    floor_port = free_port()
    floor = start("floor", [FLOOR, f"127.0.0.1:{floor_port}", sim_base + "/v2/process", token, "demo-api-key",
                            os.path.join(WORK, "answer.json")])
    wait_http(f"http://127.0.0.1:{floor_port}/answer", method="POST")
    targets["actix-web + awc floor"] = (f"http://127.0.0.1:{floor_port}/pass", json_header, [floor.pid])
    targets["actix-web answer floor"] = (f"http://127.0.0.1:{floor_port}/answer", json_header, [floor.pid])

    # Extra load generator flags of a target (TLS, a new connection per request).
    loadgen_extra = {}
    if "tls" in PARTS:
        ca, cert, key = make_certificates()
        tls_proc, tls_url, _ = courier("courier-tls-cache", {"EXTERNAL_API_CACHE_TTL": "3600",
                                                             "COURIER_TLS_CERT_FILE": cert, "COURIER_TLS_KEY_FILE": key})
        tls_url = tls_url.replace("http://", "https://")
        import ssl
        context = ssl.create_default_context(cafile=ca)
        for _ in range(2):
            urllib.request.urlopen(urllib.request.Request(tls_url, data=BODY.encode(), method="POST",
                                                          headers={"Content-Type": "application/json"}),
                                   timeout=10, context=context).read()
        plain_cache_url, _, plain_cache_pids = targets["courier (cache)"]
        targets["courier (cache), new connection per request"] = (plain_cache_url, json_header, plain_cache_pids)
        loadgen_extra["courier (cache), new connection per request"] = ["--close"]
        for name, extra in [("courier TLS (cache), keep-alive", []),
                            ("courier TLS (cache), new connection, resumed", ["--close"]),
                            ("courier TLS (cache), new connection, full handshake", ["--close", "--no-resume"])]:
            targets[name] = (tls_url, json_header, [tls_proc.pid])
            loadgen_extra[name] = ["--ca", ca, *extra]

    results = {}

    traced = {}  # target name -> its admin URL, for the tracing couriers

    def measure(scenario, name, url, headers, pids, rate=0):
        admin = traced.get(name)
        spans_before = settled_trace_spans(admin) if admin else None
        user_before, system_before = cpu_seconds(pids)
        r = loadgen(url, headers, rate=rate, extra=loadgen_extra.get(name, ()))
        # A tracing courier's work includes exporting the run's spans, which may come after it.
        spans_after = settled_trace_spans(admin) if admin else None
        user_after, system_after = cpu_seconds(pids)
        per_10k = 10000 / max(r["requests"], 1)
        if spans_before is not None and spans_after is not None:
            r["spans_per_10k"] = {k: (spans_after.get(k, 0) - spans_before.get(k, 0)) * per_10k
                                  for k in ("exported", "failed", "dropped")}
        r["user_per_10k"] = (user_after - user_before) * per_10k
        r["system_per_10k"] = (system_after - system_before) * per_10k
        r["cpu_per_10k"] = r["user_per_10k"] + r["system_per_10k"]
        r["peak_rss_mib"] = peak_rss_mib(pids)
        results.setdefault(scenario, {}).setdefault(name, []).append(r)
        codes = ",".join(f"{k}:{v}" for k, v in r["statuses"].items())
        print(f"  {scenario:<22} {name:<18} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.3f}  p99 {r['p99_ms']:.3f} ms"
              f"  cpu/10k {r['cpu_per_10k']:.3f} s (user {r['user_per_10k']:.3f})  [{codes}] errors {r['errors']}"
              + (f"  TLS handshakes {r['tls_handshakes']} (resumed {r['tls_resumed']})" if r.get("tls_handshakes") else "")
              + ("  spans/10k " + " ".join(f"{k} {v:.0f}" for k, v in r["spans_per_10k"].items())
                 if "spans_per_10k" in r else ""), flush=True)

    # The targets of every pass-through scenario (closed loop, fixed rate, 20 ms upstream).
    passing = ["direct", "courier", "nginx", "haproxy", "actix-web + awc floor"]
    if COURIER_B:
        passing.insert(2, "courier B")
    plan = [
        ("pass", "pass-through", passing, 0),
        ("cache", "cache hit", ["direct", "courier (cache)", "nginx proxy_cache", "actix-web answer floor"], 0),
        # The same pass-through at a fixed rate every target sustains: latency at equal load (the
        # closed loop's p99 mostly shows how fast each target runs), and CPU without the closed
        # loop's batching, which grows with a target's own speed.
        ("steady", f"pass-through, {STEADY_RATE}/s", passing, STEADY_RATE),
        # What TLS costs per request, and what a handshake costs (cache hits, closed loop).
        ("tls", "TLS on the gateway listener (cache hit)",
         ["courier (cache)", "courier (cache), new connection per request", "courier TLS (cache), keep-alive",
          "courier TLS (cache), new connection, resumed", "courier TLS (cache), new connection, full handshake"], 0),
    ]
    if COURIER_B:
        b_pass, b_pass_url, _ = courier("courier-b-pass", {}, COURIER_B)
        b_cache, b_cache_url, _ = courier("courier-b-cache", {"EXTERNAL_API_CACHE_TTL": "3600"}, COURIER_B)
        targets["courier B"] = (b_pass_url, json_header, [b_pass.pid])
        targets["courier B (cache)"] = (b_cache_url, json_header, [b_cache.pid])
        for _ in range(2):
            post(b_cache_url, BODY, {"Content-Type": "application/json"})
        plan[1][2].insert(2, "courier B (cache)")
    if QUOTAS:
        state = os.path.join(WORK, "quota-state")
        for name, extra in [("courier, quotas", {}), ("courier (cache), quotas", {"EXTERNAL_API_CACHE_TTL": "3600"})]:
            os.makedirs(state + name.replace(" ", "-"), exist_ok=True)
            quota = {"EXTERNAL_API_QUOTAS": QUOTAS, "COURIER_STATE_DIR": state + name.replace(" ", "-"), **extra}
            q_proc, q_url, _ = courier(name.replace(" ", "-").replace(",", ""), quota)
            targets[name] = (q_url, json_header, [q_proc.pid])
        for _ in range(2):
            post(targets["courier (cache), quotas"][0], BODY, {"Content-Type": "application/json"})
        passing.insert(passing.index("courier") + 1, "courier, quotas")
        hits = plan[1][2]
        hits.insert(hits.index("courier (cache)") + 1, "courier (cache), quotas")
    if TRACE_RATIOS:
        sink_port = free_port()
        start("otlp-sink", [sys.executable, os.path.join(ROOT, "bench", "otlp_sink.py"), str(sink_port)])
        wait_http(f"http://127.0.0.1:{sink_port}/v1/traces", method="POST")
        for r in TRACE_RATIOS:
            tracing = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}/v1/traces",
                       "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": r}
            t_pass, t_pass_url, t_pass_admin = courier(f"courier-pass-trace{r}", tracing)
            t_cache, t_cache_url, t_cache_admin = courier(f"courier-cache-trace{r}",
                                                          {"EXTERNAL_API_CACHE_TTL": "3600", **tracing})
            pass_name, cache_name = f"courier, traces {r}", f"courier (cache), traces {r}"
            targets[pass_name] = (t_pass_url, json_header, [t_pass.pid])
            targets[cache_name] = (t_cache_url, json_header, [t_cache.pid])
            traced[pass_name], traced[cache_name] = t_pass_admin, t_cache_admin
            for _ in range(2):
                post(t_cache_url, BODY, {"Content-Type": "application/json"})
            # After courier (and the ratios before), in the order given.
            passing.insert(passing.index("courier") + 1 + TRACE_RATIOS.index(r), pass_name)
            hits = plan[1][2]
            hits.insert(hits.index("courier (cache)") + 1 + TRACE_RATIOS.index(r), cache_name)
    for rnd in range(1, ROUNDS + 1 if PARTS - {"memory"} else 1):
        print(f"round {rnd}", flush=True)
        for part, scenario, names, rate in plan:
            if part in PARTS:
                for name in names:
                    url, headers, pids = targets[name]
                    measure(scenario, name, url, headers, pids, rate)
        if "latency" in PARTS:
            # Upstream with 20 ms latency, at a fixed rate.
            post(sim_base + "/_sim/faults", '{"latency_ms": 20}', {"Content-Type": "application/json"})
            for name in passing:
                url, headers, pids = targets[name]
                measure("20 ms upstream, 1000/s", name, url, headers, pids, rate=1000)
            post(sim_base + "/_sim/faults", '{"reset": true}', {"Content-Type": "application/json"})
        # Fast answers of courier itself, at a fixed rate, beside nginx answering a fixed 429
        # (the machine's floor for a trivial answer at this rate).
        fixed_url, _, _ = targets["nginx fixed 429 (reference)"]
        if "reject" in PARTS:
            scenario = "over-budget rejection, 2000/s"
            measure(scenario, "courier", tight_url, json_header + ["X-Request-Timeout: 0.05"], [tight_proc.pid], rate=2000)
            measure(scenario, "nginx fixed 429 (reference)", fixed_url, json_header, workers, rate=2000)
        if "breaker" in PARTS:
            scenario = "open-breaker fail-fast, 2000/s"
            post(pass_admin + "/admin/breaker", '{"mode": "open"}', {"Content-Type": "application/json"})
            measure(scenario, "courier", pass_url, json_header, [pass_proc.pid], rate=2000)
            post(pass_admin + "/admin/breaker", '{"mode": "auto"}', {"Content-Type": "application/json"})
            measure(scenario, "nginx fixed 429 (reference)", fixed_url, json_header, workers, rate=2000)

    # Memory, each on a fresh process so earlier load does not count: 10k idle keep-alive
    # connections (courier and nginx), then the cache at its realistic sizes (5k and 50k
    # answers: at the default TTL the upstream's limit lets at most ~5k fresh answers exist,
    # ~5k-50k with the stale windows on) and full at its byte bound, for each courier build. The
    # status store is kept at 1000 entries (COURIER_JOB_MAX), so that what grows is the cache.
    if "memory" not in PARTS:
        report(results, None)
        return

    def idle_rss(pid_of, url):
        before = sum(rss_mib(p) for p in pid_of())
        idle = subprocess.Popen([LOADGEN, url, "--connections", "10000", "--method", "POST", "--body", BODY,
                                 "--header", "Content-Type: application/json", "--idle"],
                                stdout=subprocess.PIPE, text=True)
        ready = idle.stdout.readline().split()
        held = sum(rss_mib(p) for p in pid_of())
        idle.kill()
        idle.wait()
        return int(ready[1]) if len(ready) > 1 else 0, before, held

    idle_proc, idle_url, _ = courier("courier-idle", {"EXTERNAL_API_CACHE_TTL": "3600"})
    post(idle_url, BODY, {"Content-Type": "application/json"})
    idle_courier = idle_rss(lambda: [idle_proc.pid], idle_url)
    idle_nginx = idle_rss(lambda: nginx_workers(nginx.pid), nginx_cache_url)

    pad = "p" * 200

    def cache_metrics(admin):
        text = urllib.request.urlopen(admin + "/metrics").read().decode()
        return {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                if l.startswith("courier_cache_")}

    def fill(url, admin, until, label, target=None):
        """Fills with distinct answers until `until(cache metrics)` holds; returns the metrics. With
        `target`, the last loads are sized by the fill rate so far, to land just past it."""
        # A first load short enough not to pass a small target by much.
        started, seconds = time.monotonic(), min(1.0, target / 100_000) if target else 1.0
        for round_no in range(400):
            # `{n}` counts from 0 in every run: the label and round keep the runs' bodies apart.
            body = '{"data": {"input": "' + f"{label}-{round_no}" + '-{n}-' + pad + '"}}'
            r = loadgen(url, json_header, seconds=seconds, body=body, unique=True)
            metrics = cache_metrics(admin)
            if until(metrics):
                return metrics
            if time.monotonic() - started > 300:
                break
            # Every request is a new answer: the load's own rate sizes the next one.
            rate = r["requests"] / max(r["seconds"], 1e-3)
            if target:
                seconds = max(0.02, min(3.0, (target - metrics.get("courier_cache_entries", 0)) / rate * 1.02))
        raise SystemExit(f"{label}: the cache did not fill")

    def sizes(name, binary):
        """A fresh courier filled to each realistic size: [(answers, cache bytes, RSS)], RSS before."""
        proc, url, admin = courier(name, {"EXTERNAL_API_CACHE_TTL": "3600", "COURIER_JOB_MAX": "1000",
                                          "COURIER_CACHE_MAX_BYTES": str(512 << 20)}, binary)
        post(url, BODY, {"Content-Type": "application/json"})
        before = rss_mib(proc.pid)
        rows = []
        for size in MEMORY_SIZES:
            # The loads may overshoot a little: the rows say how many answers were held.
            m = fill(url, admin, lambda m: m.get("courier_cache_entries", 0) >= size, f"{name}-{size}", size)
            rows.append((m["courier_cache_entries"], m["courier_cache_bytes"], rss_mib(proc.pid)))
        answer = json.loads(post(url, '{"data": {"input": "x-' + pad + '"}}', {"Content-Type": "application/json"}))
        proc.kill()
        return rows, before, len(json.dumps(answer["result"], separators=(",", ":")))

    def full(name, binary):
        """A fresh courier filled past its byte bound: (bound, entries, cache bytes, RSS before, RSS filled)."""
        bound = MEMORY_BOUND_MIB << 20
        proc, url, admin = courier(name, {"EXTERNAL_API_CACHE_TTL": "3600", "COURIER_JOB_MAX": "1000",
                                          "COURIER_CACHE_MAX_BYTES": str(bound)}, binary)
        post(url, BODY, {"Content-Type": "application/json"})
        before = rss_mib(proc.pid)
        # Full, and as many answers again evicted to make room: the bound has been held a while.
        m = fill(url, admin, lambda m: m.get('courier_cache_evictions_total{cause="size"}', 0)
                 >= max(m.get("courier_cache_entries", 0), 1), name)
        filled = rss_mib(proc.pid)
        proc.kill()
        return bound, m["courier_cache_entries"], m["courier_cache_bytes"], before, filled

    builds = [("courier", COURIER)] + ([("courier B", COURIER_B)] if COURIER_B else [])
    report(results, {
        "idle_courier": idle_courier, "idle_nginx": idle_nginx,
        "sizes": [(label, sizes(f"fill-{i}", binary)) for i, (label, binary) in enumerate(builds)],
        "full": [(label, full(f"full-{i}", binary)) for i, (label, binary) in enumerate(builds)],
    })


def med(values):
    return statistics.median(values), min(values), max(values)


def report(results, memory):
    print()
    print(f"Machine: {os.cpu_count()} cores, {platform_line()}; {ROUNDS} rounds of {SECONDS:g} s per target, "
          f"{CONNS} connections, one worker per target, per-request logging off for all.")
    for scenario, by_target in results.items():
        direct = by_target.get("direct")
        print()
        print(f"### {scenario}")
        print()
        print("| target | req/s median (min–max) | × direct | p50 ms | p99 ms | CPU s / 10k req (min–max) "
              "| of it user / system | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for name, runs in by_target.items():
            rps = med([r["rps"] for r in runs])
            cpu = med([r["cpu_per_10k"] for r in runs])
            ratio = f"{rps[0] / statistics.median([r['rps'] for r in direct]):.2f}" if direct else "—"
            p50 = statistics.median([r["p50_ms"] for r in runs])
            p99 = statistics.median([r["p99_ms"] for r in runs])
            user = statistics.median([r["user_per_10k"] for r in runs])
            system = statistics.median([r["system_per_10k"] for r in runs])
            rss = max(r["peak_rss_mib"] for r in runs)
            print(f"| {name} | {rps[0]:.0f} ({rps[1]:.0f}–{rps[2]:.0f}) | {ratio} | {p50:.3f} | {p99:.3f} | "
                  f"{cpu[0]:.3f} ({cpu[1]:.3f}–{cpu[2]:.3f}) | {user:.3f} / {system:.3f} | {rss:.1f} |")
    spans = [(scenario, name, runs) for scenario, by_target in results.items() for name, runs in by_target.items()
             if any("spans_per_10k" in r for r in runs)]
    if spans:
        print()
        print("### trace spans")
        print()
        print("Spans per 10k requests, median (min–max) of the rounds: exported to the sink, failed (the "
              "export refused or lost), dropped (the queue full).")
        print()
        print("| scenario | target | exported | failed | dropped |")
        print("|---|---|---|---|---|")
        for scenario, name, runs in spans:
            cells = []
            for k in ("exported", "failed", "dropped"):
                v = med([r["spans_per_10k"][k] for r in runs if "spans_per_10k" in r])
                cells.append(f"{v[0]:.0f} ({v[1]:.0f}–{v[2]:.0f})")
            print(f"| {scenario} | {name} | " + " | ".join(cells) + " |")
    m = memory
    if m is None:
        return
    print()
    print("### memory")
    print()
    print("| measure | value |")
    print("|---|---|")
    for name, (held, before, with_them) in (("courier", m["idle_courier"]), ("nginx", m["idle_nginx"])):
        print(f"| {name}: RSS before / with {held} idle keep-alive connections | {before:.1f} / {with_them:.1f} MiB "
              f"({(with_them - before) * 1024 / max(held, 1):.1f} KiB each) |")
    print()
    print(f"Cache at its realistic sizes (status store at 1000 entries, `COURIER_CACHE_MAX_BYTES` 512 MiB):")
    print()
    print("| build | answers held | answer size | courier_cache_bytes MiB | RSS before / filled MiB | RSS added per answer |")
    print("|---|---|---|---|---|---|")
    for label, (rows, before, answer_bytes) in m["sizes"]:
        for entries, cache_bytes, rss in rows:
            print(f"| {label} | {entries:.0f} | {answer_bytes} B | {cache_bytes / 2**20:.1f} | {before:.1f} / {rss:.1f} "
                  f"| {(rss - before) * 2**20 / max(entries, 1):.0f} B |")
    print()
    print("Cache full at its byte bound (status store at 1000 entries), against RSS ≤ 1.15 × bound + RSS before:")
    print()
    print("| build | bound MiB | answers held | courier_cache_bytes MiB | RSS before / filled MiB | (RSS − before) / bound "
          "| RSS / (1.15 × bound + before) |")
    print("|---|---|---|---|---|---|---|")
    for label, (bound, entries, cache_bytes, before, filled) in m["full"]:
        mib = bound / 2**20
        print(f"| {label} | {mib:.0f} | {entries:.0f} | {cache_bytes / 2**20:.1f} | {before:.1f} / {filled:.1f} "
              f"| {(filled - before) / mib:.3f} | {filled / (1.15 * mib + before):.3f} |")


def platform_line():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


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
