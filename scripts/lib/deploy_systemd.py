"""Does deploy/systemd/courier.service fit courier? (scripts/deploy-check; stdlib only)

    python3 deploy_systemd.py check UNIT ENV_EXAMPLE TLS_DROPIN TLS_HOOK
    python3 deploy_systemd.py trace UNIT COURIER_BINARY TLS_DROPIN TLS_HOOK

`check` reads the unit and the environment file example: every variable is one courier knows
(the commented-out ones too), COURIER_STATE_DIR is the unit's StateDirectory=, every *_FILE
points into the credentials directory at a credential the unit loads, Type=notify, and
TimeoutStopSec holds courier's graceful stop; and the TLS drop-in and its deploy hook
(deploy_systemd_tls.py).

`trace` runs the real binary under strace the way the unit runs it (secrets in files, a notify
socket, a quota window counted in a state directory as under StateDirectory=), through READY=1,
a sync request, an async job, a metrics scrape, a SIGHUP reload and a SIGTERM stop with
STOPPING=1 that leaves the quota state file behind (so its lock, write, fsync and rename were
made), then checks that every system call it made is one the unit's SystemCallFilter allows,
every socket is of a family RestrictAddressFamilies allows, and no mapping is made writable and
executable or made executable later (MemoryDenyWriteExecute). It runs twice: over plain HTTP,
and with the TLS drop-in over HTTPS, through a certificate renewed while courier runs
(deploy_systemd_tls.py).
A call outside the filter would fail with EPERM under systemd: this finds it here first.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_courier as courier  # noqa: E402
import deploy_systemd_tls  # noqa: E402


def fail(problems):
    for problem in problems:
        print(f"deploy-check: {problem}", file=sys.stderr)
    sys.exit(1)


def unit_settings(path):
    """(key, value) pairs of the unit, in order; commented-out `Environment=` and
    `LoadCredential=` lines (the optional secrets) are returned with a key prefixed by '#'."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            m = re.match(r"^#\s*(Environment|LoadCredential)=(.*)$", line)
            if m:
                pairs.append(("#" + m.group(1), m.group(2)))
            elif line and not line.startswith(("#", ";", "[")) and "=" in line:
                key, _, value = line.partition("=")
                pairs.append((key.strip(), value.strip()))
    return pairs


def env_file(path, commented=False):
    """The file's VARIABLE=value lines; with `commented`, also the `#VARIABLE=value` ones (the
    optional settings it shows), so their names are checked too."""
    env = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if commented and re.match(r"^#[A-Z][A-Z0-9_]*=", line):
                line = line[1:]
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
    return env


def check(unit, example, dropin, hook):
    problems = deploy_systemd_tls.dropin_problems(unit_settings(dropin), hook)
    pairs = unit_settings(unit)
    settings = {}
    for key, value in pairs:
        settings.setdefault(key, []).append(value)
    known, documented, read = courier.known_variables()
    env = env_file(example)
    for name in env_file(example, commented=True):
        why = courier.unknown_variable(name, known, documented, read)
        if why:
            problems.append(f"deploy/systemd/courier.env.example: {why}")
    for commented in (False, True):
        credentials = {v.split(":", 1)[0] for v in settings.get(("#" if commented else "") + "LoadCredential", [])}
        for assignment in settings.get(("#" if commented else "") + "Environment", []):
            for word in shlex.split(assignment):
                name, _, value = word.partition("=")
                why = courier.unknown_variable(name, known, documented, read)
                if why:
                    problems.append(f"deploy/systemd/courier.service: {why}")
                if name.endswith("_FILE"):
                    credential = value[len("%d/"):] if value.startswith("%d/") else None
                    if credential not in credentials:
                        problems.append(f"deploy/systemd/courier.service: {name}={value} is not %d/<a credential "
                                        f"the unit loads with LoadCredential=>")
    # ProtectSystem=strict makes every other path read-only: the quota counts' directory must
    # be the one systemd makes writable.
    state_dir = env_file(example, commented=True).get("COURIER_STATE_DIR")
    writable = {"/var/lib/" + d for v in settings.get("StateDirectory", []) for d in v.split()}
    if state_dir is not None and state_dir.rstrip("/") not in writable:
        problems.append(f"deploy/systemd/courier.env.example: COURIER_STATE_DIR={state_dir} is not the unit's "
                        f"StateDirectory= ({', '.join(sorted(writable)) or 'none'}): ProtectSystem=strict leaves it read-only")
    if settings.get("Type") != ["notify"]:
        problems.append("deploy/systemd/courier.service: Type= is not notify (courier sends READY=1 and STOPPING=1)")
    if "AF_UNIX" not in " ".join(settings.get("RestrictAddressFamilies", [])):
        problems.append("deploy/systemd/courier.service: RestrictAddressFamilies= lacks AF_UNIX, which READY=1 needs")
    stop = settings.get("TimeoutStopSec", ["90"])[-1]
    if not stop.isdigit():
        problems.append(f"deploy/systemd/courier.service: TimeoutStopSec={stop} is not whole seconds")
    else:
        problems += courier.grace_problems("deploy/systemd/courier.service", int(stop), 0, env, "TimeoutStopSec")
    if problems:
        fail(problems)
    print("courier.service, courier.env.example and courier-tls.conf fit courier (variables, credentials, the state "
          "directory, Type=notify, TimeoutStopSec; TLS files in the group's directory, in pairs, as the deploy hook installs them)")


def expand(group, seen=None):
    """The system calls of a systemd syscall group, sub-groups expanded."""
    seen = set() if seen is None else seen
    if group in seen:
        return set()
    seen.add(group)
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group],
                         check=True, capture_output=True, text=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        calls |= expand(line, seen) if line.startswith("@") else {line}
    return calls


def allowed_calls(unit):
    allow, deny = set(), set()
    for key, value in unit_settings(unit):
        if key != "SystemCallFilter":
            continue
        negate = value.startswith("~")
        for word in value.lstrip("~").split():
            calls = expand(word) if word.startswith("@") else {word}
            (deny if negate else allow).update(calls)
    return allow - deny


def wait_for(what, predicate, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def http(method, url, body=None, headers=None):
    headers = dict(headers or {}, **({"Content-Type": "application/json"} if body is not None else {}))
    request = urllib.request.Request(url, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return None, b""


def exercise(binary, work, tls=None):
    """Runs courier serve under strace through a little of everything; returns the trace path.
    With `tls` (a deploy_systemd_tls.Tls), both listeners serve HTTPS and a renewal is made."""
    sim = subprocess.Popen([binary, "simulate", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    request, scheme = (tls.http, "https") if tls else (http, "http")
    try:
        line = sim.stdout.readline()
        base = re.search(r"(http://\S+/v2)", line).group(1)
        state = os.path.join(work, "state")
        os.mkdir(state, 0o700)
        for name, value in (("api-key", "demo-api-key"), ("client-secret", "demo-secret"), ("admin-token", "t" * 32)):
            with open(os.path.join(work, name), "w") as f:
                f.write(value + "\n")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(os.path.join(work, "notify"))
        notify.settimeout(20)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NOTIFY_SOCKET": os.path.join(work, "notify"),
               "EXTERNAL_API_BASE_URL": base, "EXTERNAL_OAUTH_CLIENT_ID": "courier-demo",
               "EXTERNAL_API_KEY_FILE": os.path.join(work, "api-key"),
               "EXTERNAL_OAUTH_CLIENT_SECRET_FILE": os.path.join(work, "client-secret"),
               "COURIER_ADMIN_TOKEN_FILE": os.path.join(work, "admin-token"),
               "COURIER_LISTEN": "127.0.0.1:0", "COURIER_ADMIN_LISTEN": "127.0.0.1:0", "COURIER_WORKERS": "2",
               # The state file's lock, writes, fsyncs and renames are traced too.
               "EXTERNAL_API_QUOTAS": "100000/day", "COURIER_STATE_DIR": state, **(tls.env if tls else {})}
        trace = os.path.join(work, "trace")
        command = ["strace", "-f", "-qq", "-o", trace, binary, "serve"]
        if tls:
            # What systemd gives the dynamic user: its credentials, its state directory, the socket.
            os.chmod(work, 0o711)
            tls.own(state, notify.getsockname(), *(os.path.join(work, n) for n in ("api-key", "client-secret", "admin-token")))
            open(trace, "w").close()
            tls.own(trace)
            command = tls.command(command)
        log = open(os.path.join(work, "courier.log"), "w")
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            ready = notify.recv(4096).decode()
            if "READY=1" not in ready.splitlines():
                raise RuntimeError(f"the first notification was not READY=1: {ready!r}")
            gateway = re.search(r"gateway (\S+?),", ready).group(1)
            admin = re.search(r"admin (\S+)", ready).group(1)
            wait_for("/readyz", lambda: request("GET", f"{scheme}://{admin}/readyz")[0] == 200)
            status, _ = request("POST", f"{scheme}://{gateway}/api/external/process", {"data": {"input": "traced"}})
            if status != 200:
                raise RuntimeError(f"a sync request answered {status}")
            status, _ = request("POST", f"{scheme}://{gateway}/api/external/process",
                                {"data": {"input": "traced later"}, "options": {"async": True}},
                                {"X-Request-Id": "deploy-check-job"})
            if status != 202:
                raise RuntimeError(f"an async request answered {status}")
            wait_for("the async job", lambda: b'"completed"' in request(
                "GET", f"{scheme}://{gateway}/api/external/status/deploy-check-job")[1])
            request("GET", f"{scheme}://{admin}/metrics")
            child_pid = courier_pid(child.pid)
            if tls:
                tls.renew(gateway, admin, log.name, wait_for)
                if courier_pid(child.pid) != child_pid:
                    raise RuntimeError("courier was restarted during the certificate renewal")
            reloads = open(log.name).read().count('"credentials_reloaded"')
            os.kill(child_pid, signal.SIGHUP)
            wait_for("the SIGHUP reload", lambda: open(log.name).read().count('"credentials_reloaded"') > reloads)
            os.kill(child_pid, signal.SIGTERM)
            stopping = notify.recv(4096).decode()
            if "STOPPING=1" not in stopping.splitlines():
                raise RuntimeError(f"SIGTERM did not announce STOPPING=1: {stopping!r}")
            if child.wait(timeout=40) != 0:
                raise RuntimeError("courier did not exit 0 after SIGTERM")
            if not os.path.exists(os.path.join(state, "quota-state.json")):
                raise RuntimeError("courier left no quota-state.json in COURIER_STATE_DIR after counting and a graceful stop")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            notify.close()
    finally:
        sim.terminate()
        sim.wait()
    return trace


def courier_pid(strace_pid):
    """The traced courier: strace's only child."""
    with open(f"/proc/{strace_pid}/task/{strace_pid}/children") as f:
        children = f.read().split()
    if len(children) != 1:
        raise RuntimeError(f"strace has {len(children)} children, expected courier alone")
    return int(children[0])


CALL = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)")
SOCKET = re.compile(r"^\d+\s+socket\((AF_[A-Z0-9]+|\d+)")
EXEC_MAPPING = re.compile(r"^\d+\s+(mmap|mprotect|pkey_mprotect)\(.*?(PROT_[A-Z_|]+)")


def analyse(trace, unit):
    allowed = allowed_calls(unit)
    families = set()
    for key, value in unit_settings(unit):
        if key == "RestrictAddressFamilies":
            families |= set(value.split())
    calls, used_families, problems = {}, set(), []
    with open(trace, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = CALL.match(line)
            if m:
                calls[m.group(1)] = calls.get(m.group(1), 0) + 1
            m = SOCKET.match(line)
            if m:
                used_families.add(m.group(1))
            m = EXEC_MAPPING.match(line)
            if m and "PROT_EXEC" in m.group(2) and (m.group(1) != "mmap" or "PROT_WRITE" in m.group(2)):
                problems.append(f"MemoryDenyWriteExecute: courier made memory executable: {line.strip()[:160]}")
    if not calls:
        problems.append("the trace holds no system call: strace failed?")
    for call in sorted(set(calls) - allowed):
        problems.append(f"SystemCallFilter: courier calls {call} ({calls[call]}x), which the unit's filter refuses "
                        "(EPERM under systemd)")
    for family in sorted(used_families - families):
        problems.append(f"RestrictAddressFamilies: courier opens {family} sockets, which the unit refuses")
    if problems:
        fail(problems)
    print(f"courier under strace: {len(calls)} distinct system calls ({sum(calls.values())} calls), all allowed by "
          f"SystemCallFilter; socket families {', '.join(sorted(used_families))}; no writable+executable memory")


def main(argv):
    if len(argv) == 5 and argv[0] == "check":
        check(*argv[1:])
    elif len(argv) == 5 and argv[0] == "trace":
        unit, binary, dropin, hook = argv[1], os.path.abspath(argv[2]), argv[3], os.path.abspath(argv[4])
        for label in ("plain HTTP", "HTTPS with courier-tls.conf"):
            with tempfile.TemporaryDirectory(prefix="courier-deploy-check-") as work:
                try:
                    tls = deploy_systemd_tls.Tls(work, unit_settings(dropin), hook) if label.startswith("HTTPS") else None
                    run = os.path.join(work, "run")
                    os.mkdir(run, 0o700)
                    installed = binary
                    if tls:
                        # Installed as the unit expects it (root's, 0755): the dynamic user may not
                        # reach the build's directory (a target dir under /root, as in CI).
                        installed = os.path.join(work, "courier")
                        shutil.copyfile(binary, installed)
                        os.chmod(installed, 0o755)
                    trace = exercise(installed, run, tls)
                except (RuntimeError, OSError, AttributeError, subprocess.CalledProcessError) as error:
                    log = os.path.join(work, "run", "courier.log")
                    tail = open(log).read()[-2000:] if os.path.exists(log) else ""
                    detail = getattr(error, "stderr", None) or ""
                    fail([f"tracing courier serve ({label}) failed: {error} {detail}".rstrip(), f"courier's log ends: {tail}"])
                print(f"{label}: ", end="")
                analyse(trace, unit)
                if tls:
                    print(f"  {tls.describe()}; served over HTTPS to curl, the certificate renewed by "
                          "courier-tls-deploy-hook and served by both listeners without a restart, to a connection "
                          "opened before it too; a mismatched pair refused by the hook")
    else:
        sys.exit("usage: deploy_systemd.py check UNIT ENV_EXAMPLE TLS_DROPIN TLS_HOOK | "
                 "trace UNIT COURIER_BINARY TLS_DROPIN TLS_HOOK")


if __name__ == "__main__":
    main(sys.argv[1:])
