"""TLS under systemd: deploy/systemd/courier-tls.conf and courier-tls-deploy-hook, for
deploy_systemd.py (scripts/deploy-check; stdlib only).

`dropin_problems` reads the drop-in: it may add only Environment= and SupplementaryGroups= (so
the unit's hardening stays the unit's, and its exposure is rated on the two together anyway),
every variable is one courier knows, every *_FILE lies in TLS_DIR, a certificate comes with its
key, and the deploy hook installs into that directory, with that group, under those names.

`Tls` is the TLS part of the strace run: a CA and two server certificates made by openssl; the
first pair installed by the deploy hook into a directory like /etc/courier/tls; courier run the
way the unit runs it with the drop-in (every TLS variable of the drop-in, the commented-out
client CA and admin pair too), as a user of its own that reads the files only through the group
(a supplementary group, in a user namespace that maps only its own uid and gid, as PrivateUsers=
does); requests over HTTPS with curl; then the second pair installed by the hook while courier
runs, and served by both listeners without a restart, to a connection opened before it too.
"""

import grp
import http.client
import json
import os
import re
import shlex
import socket
import ssl
import subprocess

import deploy_courier as courier

TLS_DIR = "/etc/courier/tls"
DROPIN_KEYS = {"Environment", "#Environment", "SupplementaryGroups"}
PAIRS = (("COURIER_TLS_CERT_FILE", "COURIER_TLS_KEY_FILE"), ("COURIER_ADMIN_TLS_CERT_FILE", "COURIER_ADMIN_TLS_KEY_FILE"))
# A uid of DynamicUser='s range (61184-65519) that courier runs as when this runs as root.
DYNAMIC_UID = 64901


def assignments(pairs):
    """(commented, name, value) of every variable the drop-in's Environment= lines set."""
    out = []
    for key, value in pairs:
        if key in ("Environment", "#Environment"):
            for word in shlex.split(value):
                name, _, val = word.partition("=")
                out.append((key.startswith("#"), name, val))
    return out


def hook_defaults(hook):
    """The deploy hook's defaults: {"dir": ..., "group": ..., "name": ...}."""
    with open(hook, encoding="utf-8") as f:
        text = f.read()
    return dict(re.findall(r"^(dir|group|name)=\$\{COURIER_TLS_[A-Z]+:-([^}]*)\}$", text, re.M))


def dropin_problems(pairs, hook):
    where = "deploy/systemd/courier-tls.conf"
    problems = []
    for key, _ in pairs:
        if key not in DROPIN_KEYS:
            problems.append(f"{where}: sets {key}=; the drop-in may add only Environment= and SupplementaryGroups=, "
                            "so that it cannot loosen the unit's hardening")
    groups = [g for key, value in pairs if key == "SupplementaryGroups" for g in value.split()]
    if len(groups) != 1:
        problems.append(f"{where}: SupplementaryGroups= names {groups or 'no group'}; expected the one group that owns {TLS_DIR}")
    known, documented, read = courier.known_variables()
    settings = assignments(pairs)
    files = {}
    for commented, name, value in settings:
        why = courier.unknown_variable(name, known, documented, read)
        if why:
            problems.append(f"{where}: {why}")
        if name.endswith("_FILE"):
            files[name] = (commented, value)
            if os.path.dirname(value) != TLS_DIR:
                problems.append(f"{where}: {name}={value} is not in {TLS_DIR}, the directory of the group")
    for cert, key in PAIRS:
        if files.get(cert, (None,))[0] != files.get(key, (None,))[0] or cert not in files:
            problems.append(f"{where}: {cert} and {key} must both be set (or both commented out)")
    if files.get(PAIRS[0][0], (True,))[0]:
        problems.append(f"{where}: COURIER_TLS_CERT_FILE is not set: the drop-in turns TLS on for the gateway")
    defaults = hook_defaults(hook)
    hook_where = "deploy/systemd/courier-tls-deploy-hook"
    if defaults.get("dir") != TLS_DIR:
        problems.append(f"{hook_where}: installs into {defaults.get('dir')}, not {TLS_DIR}")
    if groups and defaults.get("group") != groups[0]:
        problems.append(f"{hook_where}: gives the files group {defaults.get('group')}, not {groups[0]} (SupplementaryGroups=)")
    name = defaults.get("name")
    for var in PAIRS[0]:
        wanted = f"{TLS_DIR}/{name}.{'crt' if var.endswith('CERT_FILE') else 'key'}"
        if files.get(var, (None, None))[1] != wanted:
            problems.append(f"{hook_where}: installs {wanted}, but the drop-in's {var} is {files.get(var, (None, None))[1]}")
    return problems


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki):
    """In the new directory `pki`, with openssl: ca.crt (and its key), and two server pairs for
    127.0.0.1 issued by it, courier-1.crt/.key and courier-2.crt/.key (their common names)."""
    os.mkdir(pki, 0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(pki, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=deploy-check CA", "-days", "1")
    with open(os.path.join(pki, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    for n in (1, 2):
        openssl(pki, "req", "-new", *ec, "-keyout", f"courier-{n}.key", "-out", f"courier-{n}.csr", "-subj", f"/CN=courier-{n}")
        openssl(pki, "x509", "-req", "-in", f"courier-{n}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", str(n),
                "-days", "1", "-extfile", "server.ext", "-out", f"courier-{n}.crt")


def served(address, ca):
    """The common name of the certificate served at address, verified against the CA file `ca`."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection((host, int(port)), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        return dict(pair[0] for pair in tls.getpeercert()["subject"]).get("commonName")


class Tls:
    """The TLS part of one strace run, in `work` (see the module doc)."""

    def __init__(self, work, pairs, hook):
        self.pki = os.path.join(work, "pki")
        self.dir = os.path.join(work, "tls")
        self.hook = hook
        self.as_root = os.geteuid() == 0
        self.uid = DYNAMIC_UID if self.as_root else os.getuid()
        self.gid = self.free_gid() if self.as_root else os.getgid()
        self.userns = None  # None while probing: the probe asks with one
        if self.as_root:
            os.chmod(work, 0o711)  # the unit's user passes through to its files, and lists nothing
            # Where user namespaces are off (some containers), the group is exercised without one.
            self.userns = subprocess.run(self.command(["true"]), capture_output=True).returncode == 0
        make_pki(self.pki)
        # The directory as the install comment of courier-tls.conf makes it: root, the group, 0750.
        os.mkdir(self.dir, 0o750)
        os.chown(self.dir, 0 if self.as_root else -1, self.gid)
        self.deploy("courier-1", "courier-1", check=True)
        self.env = {"COURIER_SECRET_POLL_INTERVAL": "1", "COURIER_TLS_CLIENT_AUTH": "optional"}
        for _, name, value in assignments(pairs):
            self.env[name] = value.replace(TLS_DIR, self.dir) if name.endswith("_FILE") else value
        if os.path.dirname(self.env.get("COURIER_TLS_CLIENT_CA_FILE", "")) == self.dir:
            # The client CA: put there by hand (the hook installs pairs), mode and group as the pair's.
            path = self.env["COURIER_TLS_CLIENT_CA_FILE"]
            subprocess.run(["install", "-m", "0640", "-g", str(self.gid), os.path.join(self.pki, "ca.crt"), path],
                           check=True)

    @staticmethod
    def free_gid():
        for gid in range(64990, 65500):
            try:
                grp.getgrgid(gid)
            except KeyError:
                return gid
        raise RuntimeError("no free gid for the TLS group")

    def deploy(self, cert, key, check):
        """Runs the deploy hook with courier-N.crt and courier-M.key."""
        env = dict(os.environ, COURIER_TLS_DIR=self.dir, COURIER_TLS_GROUP=str(self.gid))
        return subprocess.run(["sh", self.hook, os.path.join(self.pki, cert + ".crt"), os.path.join(self.pki, key + ".key")],
                              env=env, check=check, capture_output=True, text=True)

    def own(self, *paths):
        """Hands what the unit's dynamic user owns (its credentials, state and notify socket) to it."""
        if self.as_root:
            for path in paths:
                os.chown(path, self.uid, self.uid)

    def command(self, argv):
        """argv run as the unit's user: a uid of its own with the group as a supplementary group,
        in a user namespace mapping only that uid and gid (PrivateUsers=)."""
        if not self.as_root:
            return argv
        userns = ["unshare", "--user", f"--map-user={self.uid}", f"--map-group={self.uid}", "--"]
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", f"--groups={self.gid}", "--",
                *(userns if self.userns is not False else []), *argv]

    def describe(self):
        if self.as_root:
            return (f"courier as uid {self.uid}, the TLS files 0640 root:{self.gid} read through its supplementary group "
                    + ("in a user namespace" if self.userns else
                       "(NOT in a user namespace: unshare --user is refused here, so PrivateUsers= was not imitated)"))
        return "courier as this (non-root) user: the group's access to the files was not exercised (run as root for that)"

    def http(self, method, url, body=None, headers=None):
        """One request with curl, trusting the test CA: (status, body), or (None, b"") when it fails."""
        args = ["curl", "-sS", "--max-time", "10", "--cacert", os.path.join(self.pki, "ca.crt"), "-X", method,
                "-o", "-", "-w", "\n%{http_code}", url]
        for name, value in (headers or {}).items():
            args += ["-H", f"{name}: {value}"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        out = subprocess.run(args, capture_output=True)
        if out.returncode != 0:
            return None, b""
        content, _, code = out.stdout.rpartition(b"\n")
        return int(code), content

    def context(self):
        return ssl.create_default_context(cafile=os.path.join(self.pki, "ca.crt"))

    def served(self, address):
        return served(address, os.path.join(self.pki, "ca.crt"))

    def renew(self, gateway, admin, log_path, wait_for):
        """The renewal, while courier runs: refused for a key that is not the certificate's,
        then served by both listeners, to a connection opened before it too."""
        for address in (gateway, admin):
            if self.served(address) != "courier-1":
                raise RuntimeError(f"{address} does not serve the installed certificate courier-1")
        # A keep-alive connection opened before the renewal, asked again and again through it (so
        # its idle timeout never ends it): it must stay the same connection, answering 200.
        host, _, port = admin.rpartition(":")
        kept = http.client.HTTPSConnection(host, int(port), context=self.context(), timeout=10)
        kept.connect()
        sock = kept.sock

        def ask_kept():
            kept.request("GET", "/healthz")
            response = kept.getresponse()
            response.read()
            if response.status != 200 or kept.sock is not sock:
                raise RuntimeError(f"the connection opened before the renewal was dropped or answered {response.status}")
            return True
        ask_kept()
        before = {name: open(os.path.join(self.dir, name), "rb").read() for name in ("gateway.crt", "gateway.key")}
        if self.deploy("courier-2", "courier-1", check=False).returncode == 0:
            raise RuntimeError("courier-tls-deploy-hook installed a key that is not the certificate's")
        if {name: open(os.path.join(self.dir, name), "rb").read() for name in before} != before:
            raise RuntimeError("courier-tls-deploy-hook changed the files although it refused the pair")
        self.deploy("courier-2", "courier-2", check=True)
        for name in before:
            st = os.stat(os.path.join(self.dir, name))
            if st.st_mode & 0o777 != 0o640 or st.st_gid != self.gid:
                raise RuntimeError(f"courier-tls-deploy-hook left {name} mode {st.st_mode & 0o777:o}, group {st.st_gid}")
        for address in (gateway, admin):
            wait_for(f"the renewed certificate served at {address}",
                     lambda a=address: ask_kept() and self.served(a) == "courier-2")
        ask_kept()
        kept.close()
        # The reload's log line, written asynchronously: waited for, not read once.

        def reloaded():
            lines = [json.loads(line) for line in open(log_path) if '"credentials_reloaded"' in line]
            return any({"tls", "admin_tls"} <= set(r.get("changed", "").split(",")) for r in lines)
        wait_for("a credentials_reloaded line with changed tls and admin_tls", reloaded)
