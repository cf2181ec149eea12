"""Do the deployment files fit courier itself? Checks shared by the Kubernetes and systemd parts
of scripts/deploy-check (stdlib only).

A schema validator accepts a Deployment whose variable is misspelt (courier ignores an unknown
environment variable), whose probe asks a path courier does not serve, or whose grace period
ends before courier's own: these checks read courier's side from its sources and docs.
"""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What courier does after SIGTERM beyond COURIER_SHUTDOWN_GRACE: it stops the admin listener
# (up to 1 s, src/gateway.rs), then flushes its logs. Plus a margin before SIGKILL.
ADMIN_STOP_SECONDS = 1
MARGIN_SECONDS = 2
DEFAULTS = {"COURIER_SHUTDOWN_GRACE": 30.0, "COURIER_REQUEST_DEADLINE": 30.0}


def known_variables():
    """The variables courier reads: named in README.md's configuration table (with `/ `_FILE``
    where a file may hold the value) and read in src/config/. Returns (known, problems).

    A row's first cell names one variable, or several related ones: `A_B_C` / `_D` / `_E_F`
    (a suffix replaces as many trailing words of the first name as makes a variable that
    src/config/ reads: `COURIER_BREAKER_OPEN` / `_OPEN_MAX` names COURIER_BREAKER_OPEN_MAX), or
    full names separated by ` / `, `, ` or ` + `."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    code = ""
    for path in glob.glob(os.path.join(ROOT, "src/config/**/*.rs"), recursive=True):
        if not path.endswith("tests.rs"):
            with open(path, encoding="utf-8") as f:
                code += f.read()
    read = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', code))
    section = readme.split("\n## Configuration\n", 1)[-1].split("\n## ", 1)[0]
    documented = {}
    for line in section.splitlines():
        m = re.match(r"^\| ((?:`[A-Z_][A-Z0-9_]*`(?: / |, | \+ )?)+) \|", line)
        if not m:
            continue
        names = re.findall(r"`([A-Z_][A-Z0-9_]*)`", m.group(1))
        first = None
        for name in names:
            if not name.startswith("_"):
                first = name
                documented[name] = False
            elif name == "_FILE" and first:
                documented[first] = True
            elif first:
                words = first.split("_")
                for k in range(1, len(words)):
                    candidate = "_".join(words[:-k]) + name
                    if candidate in read:
                        documented[candidate] = False
                        break
    known = set()
    for name, has_file in documented.items():
        if name in read:
            known.add(name)
            if has_file:
                known.add(name + "_FILE")
    return known, documented, read


def unknown_variable(name, known, documented, read):
    """Why `name` is not a variable courier knows, or None when it is."""
    if name in known:
        return None
    base = name[: -len("_FILE")] if name.endswith("_FILE") else name
    if base in documented and base not in read:
        return f"{name}: README.md documents {base} but src/config/ does not read it"
    if name.endswith("_FILE") and base in documented:
        return f"{name}: courier reads {base} only from its value, not from a file"
    return f"{name}: not a variable courier knows (README.md's configuration table and src/config/ have no such name)"


def seconds(env, name):
    value = env.get(name)
    if value is None:
        return DEFAULTS[name]
    try:
        return float(value)
    except ValueError:
        return None


def admin_routes():
    with open(os.path.join(ROOT, "src/http/admin.rs"), encoding="utf-8") as f:
        # The route table: `(Method::GET, "/healthz", web::to(healthz))`.
        return set(re.findall(r'\(Method::[A-Z]+, "(/[^"]*)"', f.read()))


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


def listen_port(value, default):
    """(host, port) of a COURIER_*LISTEN value; default when unset."""
    value = value or default
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def is_loopback(host):
    return host in ("localhost", "::1") or host.startswith("127.")


def grace_problems(where, stop_budget, before_sigterm, env, budget_name):
    """The shutdown arithmetic: `stop_budget` seconds from the stop's start to SIGKILL must hold
    `before_sigterm` + COURIER_SHUTDOWN_GRACE + the admin listener's stop + a margin."""
    problems = []
    grace = seconds(env, "COURIER_SHUTDOWN_GRACE")
    deadline = seconds(env, "COURIER_REQUEST_DEADLINE")
    if grace is None or deadline is None:
        return [f"{where}: COURIER_SHUTDOWN_GRACE / COURIER_REQUEST_DEADLINE is not a number of seconds"]
    needed = before_sigterm + grace + ADMIN_STOP_SECONDS + MARGIN_SECONDS
    if stop_budget < needed:
        problems.append(f"{where}: {budget_name} is {stop_budget:g} s, below {needed:g} s = {before_sigterm:g} s before "
                        f"SIGTERM + COURIER_SHUTDOWN_GRACE {grace:g} s + {ADMIN_STOP_SECONDS} s admin listener + "
                        f"{MARGIN_SECONDS} s margin: courier could be killed mid-drain")
    if deadline > grace:
        problems.append(f"{where}: COURIER_REQUEST_DEADLINE ({deadline:g} s) exceeds COURIER_SHUTDOWN_GRACE "
                        f"({grace:g} s): a request in flight at SIGTERM could be cut off before its deadline")
    return problems
