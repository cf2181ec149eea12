"""Does courier take a certificate renewed in a Kubernetes Secret volume? (scripts/deploy-check;
stdlib only)

    python3 deploy_secret_volume.py COURIER_BINARY

components/tls mounts a kubernetes.io/tls Secret and relies on courier noticing the kubelet's
update without a restart. The kubelet (its AtomicWriter) never rewrites a file of the volume: it
writes the new Secret into a new hidden directory `..<timestamp>`, points a new symlink
`..data_tmp` at it and renames that over `..data`; the visible `tls.crt` and `tls.key` are
symlinks to `..data/tls.crt` and `..data/tls.key` that never change themselves. This builds such
a volume (certificates made by openssl), starts courier serve with both listeners on it, swaps
the volume the kubelet's way to a new pair, and checks that both listeners serve the new
certificate within a few poll intervals, from the same process.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deploy_systemd_tls import make_pki, served  # noqa: E402


def fail(problem):
    print(f"deploy-check: {problem}", file=sys.stderr)
    sys.exit(1)


def wait_for(what, predicate, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def project(volume, pki, n):
    """Writes courier-N's pair into `volume` as the kubelet writes a Secret update."""
    payload = tempfile.mkdtemp(prefix=f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.", dir=volume)
    for name, source in (("tls.crt", f"courier-{n}.crt"), ("tls.key", f"courier-{n}.key"), ("ca.crt", "ca.crt")):
        with open(os.path.join(pki, source), "rb") as f, open(os.path.join(payload, name), "wb") as out:
            out.write(f.read())
    old = os.path.realpath(os.path.join(volume, "..data")) if os.path.islink(os.path.join(volume, "..data")) else None
    os.symlink(os.path.basename(payload), os.path.join(volume, "..data_tmp"))
    os.rename(os.path.join(volume, "..data_tmp"), os.path.join(volume, "..data"))
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not os.path.islink(os.path.join(volume, name)):
            os.symlink(f"..data/{name}", os.path.join(volume, name))
    if old:
        for name in os.listdir(old):
            os.remove(os.path.join(old, name))
        os.rmdir(old)


def main(binary):
    with tempfile.TemporaryDirectory(prefix="courier-deploy-check-") as work:
        pki, volume = os.path.join(work, "pki"), os.path.join(work, "courier-tls")
        make_pki(pki)
        os.mkdir(volume)
        project(volume, pki, 1)
        ca = os.path.join(pki, "ca.crt")
        sim = subprocess.Popen([binary, "simulate", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        log_path = os.path.join(work, "courier.log")
        child = None
        try:
            base = sim.stdout.readline().split()[-1]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "EXTERNAL_API_BASE_URL": base.rstrip("/"),
                   "EXTERNAL_OAUTH_CLIENT_ID": "courier-demo", "EXTERNAL_API_KEY": "demo-api-key",
                   "EXTERNAL_OAUTH_CLIENT_SECRET": "demo-secret", "COURIER_LISTEN": "127.0.0.1:0",
                   "COURIER_ADMIN_LISTEN": "127.0.0.1:0", "COURIER_WORKERS": "1", "COURIER_SECRET_POLL_INTERVAL": "1",
                   "COURIER_TLS_CERT_FILE": os.path.join(volume, "tls.crt"),
                   "COURIER_TLS_KEY_FILE": os.path.join(volume, "tls.key"),
                   "COURIER_ADMIN_TLS_CERT_FILE": os.path.join(volume, "tls.crt"),
                   "COURIER_ADMIN_TLS_KEY_FILE": os.path.join(volume, "tls.key")}
            with open(log_path, "w") as log:
                child = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log)

            def listening():
                for line in open(log_path):
                    if '"event":"listening"' in line:
                        return json.loads(line)
            event = wait_for("courier's listening line", listening)
            addresses = (event["gateway"], event["admin"])
            for address in addresses:
                if served(address, ca) != "courier-1":
                    raise RuntimeError(f"{address} does not serve the mounted certificate courier-1")
            project(volume, pki, 2)
            for address in addresses:
                wait_for(f"the swapped certificate served at {address}", lambda a=address: served(a, ca) == "courier-2")
            if child.poll() is not None:
                raise RuntimeError("courier exited during the swap")
            child.send_signal(signal.SIGTERM)
            if child.wait(timeout=40) != 0:
                raise RuntimeError("courier did not exit 0 after SIGTERM")
        except (RuntimeError, OSError, KeyError, IndexError, subprocess.CalledProcessError) as error:
            tail = open(log_path).read()[-1500:] if os.path.exists(log_path) else ""
            fail(f"a Secret volume swapped the kubelet's way: {error}; courier's log ends: {tail}")
        finally:
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
            sim.terminate()
            sim.wait()
    print("a kubernetes.io/tls Secret volume swapped the kubelet's way (..data symlink renamed over): both listeners "
          "served the new certificate without a restart")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: deploy_secret_volume.py COURIER_BINARY")
    main(os.path.abspath(sys.argv[1]))
