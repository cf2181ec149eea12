"""Does a rendered overlay's TLS fit courier? (deploy_overlay.py; stdlib only)

A schema validator accepts probes that ask plain HTTP of a listener that serves HTTPS (every
probe fails, the pod never starts), a certificate without its key (courier refuses to start), or a
PodMonitor that scrapes https without checking whom it talks to. With no TLS variable set, the
probes and the PodMonitor must ask plain HTTP; with them:
- a certificate comes with its key, COURIER_TLS_CLIENT_AUTH and a client CA only with the gateway's
  TLS, COURIER_TLS_CLIENT_AUTH is required or optional;
- a pair is tls.crt and tls.key of one Secret of type kubernetes.io/tls (as cert-manager and
  `kubectl create secret tls` make it), mounted read-only: one Secret, so the kubelet swaps the
  certificate and the key together;
- with the admin listener over TLS, every httpGet probe asks with scheme HTTPS, and the PodMonitor
  scrapes https, verifying the certificate with a CA (a key examples/secrets makes) and by the
  admin Service's name (<service>.<namespace>.svc: a pod IP is rarely in a certificate).
"""

import posixpath

# *_FILE variables whose file is no secret: a ConfigMap volume may hold it.
NOT_SECRET = {"COURIER_TLS_CLIENT_CA_FILE"}
PAIRS = (("COURIER_TLS_CERT_FILE", "COURIER_TLS_KEY_FILE"), ("COURIER_ADMIN_TLS_CERT_FILE", "COURIER_ADMIN_TLS_KEY_FILE"))
CLIENT_AUTH = ("required", "optional")


def check(env, container, volumes, mounts, secrets, docs, problem):
    for cert, key in PAIRS:
        if (cert in env) != (key in env):
            problem(f"{cert} and {key}: one is set without the other, and courier refuses to start")
        if cert in env and key in env:
            check_pair(env, cert, key, volumes, mounts, secrets, problem)
    if {"COURIER_TLS_CLIENT_CA_FILE", "COURIER_TLS_CLIENT_AUTH"} & set(env) and "COURIER_TLS_CERT_FILE" not in env:
        problem("a client CA (COURIER_TLS_CLIENT_CA_FILE / _AUTH) without COURIER_TLS_CERT_FILE: courier refuses to start")
    auth = env.get("COURIER_TLS_CLIENT_AUTH")
    if auth is not None and "COURIER_TLS_CLIENT_CA_FILE" not in env:
        problem("COURIER_TLS_CLIENT_AUTH is set without COURIER_TLS_CLIENT_CA_FILE")
    if auth is not None and auth not in CLIENT_AUTH:
        problem(f"COURIER_TLS_CLIENT_AUTH is {auth!r}, not one of {', '.join(CLIENT_AUTH)}")

    admin_tls = "COURIER_ADMIN_TLS_CERT_FILE" in env
    scheme = "HTTPS" if admin_tls else "HTTP"
    because = "the admin listener serves HTTPS (COURIER_ADMIN_TLS_CERT_FILE)" if admin_tls else "the admin listener serves plain HTTP"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container.get(probe, {}).get("httpGet")
        if get and get.get("scheme", "HTTP") != scheme:
            problem(f"{probe} asks with scheme {get.get('scheme', 'HTTP')}, but {because}: every probe would fail")
    admin_services = [d for d in docs if d.get("kind") == "Service"
                      and any(p.get("targetPort") == "admin" for p in d["spec"].get("ports", []))]
    for monitor in (d for d in docs if d.get("kind") == "PodMonitor"):
        namespace = monitor["metadata"].get("namespace")
        names = {f"{s['metadata']['name']}.{namespace}.svc" for s in admin_services}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            check_scrape(endpoint, admin_tls, because, names, secrets, problem)


def check_pair(env, cert, key, volumes, mounts, secrets, problem):
    for var, wanted in ((cert, "tls.crt"), (key, "tls.key")):
        if posixpath.basename(env[var]) != wanted:
            problem(f"{var}={env[var]}: not the {wanted} of a kubernetes.io/tls Secret")
    if posixpath.dirname(env[cert]) != posixpath.dirname(env[key]):
        problem(f"{cert} and {key} are in different volumes: a renewal could reach one without the other")
    mount = mounts.get(posixpath.dirname(env[cert]))
    secret = volumes.get(mount["name"], {}).get("secret", {}).get("secretName") if mount else None
    if mount and not mount.get("readOnly"):
        problem(f"{cert}: its volume is not mounted readOnly")
    if secret and secret in secrets and secrets[secret].get("type") != "kubernetes.io/tls":
        problem(f"{cert}: Secret {secret} is of type {secrets[secret].get('type', 'Opaque')}, not kubernetes.io/tls "
                "(as cert-manager and `kubectl create secret tls` make it)")


def check_scrape(endpoint, admin_tls, because, names, secrets, problem):
    scheme = endpoint.get("scheme", "http")
    tls = endpoint.get("tlsConfig")
    if scheme != ("https" if admin_tls else "http"):
        problem(f"the PodMonitor scrapes with scheme {scheme}, but {because}")
    if not admin_tls:
        if tls:
            problem("the PodMonitor has a tlsConfig, but the admin listener serves plain HTTP")
        return
    if not tls or tls.get("insecureSkipVerify") or "ca" not in tls:
        problem("the PodMonitor scrapes https without verifying courier's certificate: tlsConfig needs a ca "
                "(and no insecureSkipVerify)")
        return
    if tls.get("serverName") not in names:
        problem(f"the PodMonitor's tlsConfig.serverName is {tls.get('serverName')}, not the admin Service's name "
                f"({', '.join(sorted(names)) or 'no Service targets port admin'}), which the certificate must carry")
    ref = tls["ca"].get("secret")
    if ref and ref.get("key") not in secrets.get(ref.get("name"), {}).get("data", {}):
        problem(f"the PodMonitor's CA is key {ref.get('key')} of Secret {ref.get('name')}, which examples/secrets does not make")
