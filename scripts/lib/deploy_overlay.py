"""Does a rendered overlay fit courier? (scripts/deploy-check, through deploy_manifests.py)

Reads the rendered objects (dicts) and appends one line per problem.
"""

import math
import posixpath

import deploy_courier as courier
import deploy_overlay_tls

# Overlays that are not under overlays/: where they are, and which overlay's promises they keep.
WHERE = {"tls": "examples/tls"}
SHAPE = {"tls": "redis"}

SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
}


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def cpu_cores(quantity):
    quantity = str(quantity)
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def selects(selector, labels):
    match = (selector or {}).get("matchLabels", selector or {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_overlay(overlay, docs, secret_docs, problems):
    where = WHERE.get(overlay, f"overlays/{overlay}")

    def problem(text):
        problems.append(f"{where}: {text}")

    deployments = by_kind(docs, "Deployment")
    if len(deployments) != 1:
        return problem(f"expected one Deployment, found {len(deployments)}")
    deployment = deployments[0]
    pod = deployment["spec"]["template"]
    spec, labels = pod["spec"], pod["metadata"].get("labels", {})
    containers = [c for c in spec.get("containers", []) if c.get("name") == "courier"]
    if not containers:
        return problem("the Deployment has no container named courier")
    container = containers[0]

    # The environment courier gets: the ConfigMaps it reads whole, then its own variables.
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind(docs, "ConfigMap")}
    env = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name not in configmaps:
            problem(f"envFrom names ConfigMap {name}, which the overlay does not contain")
        env.update(configmaps.get(name, {}))
    for var in container.get("env", []):
        if "value" not in var:
            problem(f"{var['name']} takes its value from elsewhere (valueFrom): secrets are files, see the *_FILE variables")
        env[var["name"]] = var.get("value", "")
    known, documented, read = courier.known_variables()
    for name in sorted(env):
        why = courier.unknown_variable(name, known, documented, read)
        if why:
            problem(why)

    # Each *_FILE names a key of a Secret mounted whole (no subPath: updates must reach it).
    mounts = {m["mountPath"].rstrip("/"): m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    secrets = {s["metadata"]["name"]: s for s in secret_docs if s.get("kind") == "Secret"}
    for name, path in sorted(env.items()):
        if not name.endswith("_FILE"):
            continue
        mount = mounts.get(posixpath.dirname(path))
        secret = volumes.get(mount["name"], {}).get("secret") if mount else None
        if mount and name in deploy_overlay_tls.NOT_SECRET and "configMap" in volumes.get(mount["name"], {}):
            continue  # a CA certificate is public: a ConfigMap (e.g. trust-manager's bundle) will do
        if not secret:
            problem(f"{name}={path}: no Secret volume is mounted at {posixpath.dirname(path)}")
            continue
        if mount.get("subPath"):
            problem(f"{name}: its Secret is mounted with subPath, so a rotated Secret never reaches the file")
        key, secret_name = posixpath.basename(path), secret["secretName"]
        if key not in secrets.get(secret_name, {}).get("data", {}):
            problem(f"{name}: examples/secrets makes no key {key} in Secret {secret_name}")

    # The quota counts' directory: with a read-only root file system, only a writable volume
    # mounted at COURIER_STATE_DIR lets courier start with quotas.
    state_dir = env.get("COURIER_STATE_DIR")
    if state_dir is not None:
        mount = mounts.get(state_dir.rstrip("/"))
        volume = volumes.get(mount["name"], {}) if mount else {}
        if not mount or mount.get("readOnly") or not ({"emptyDir", "persistentVolumeClaim", "ephemeral"} & set(volume)):
            problem(f"COURIER_STATE_DIR={state_dir}: no writable volume (emptyDir or a claim) is mounted there, "
                    "and the root file system is read-only")

    # Listeners, ports, the admin token.
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for var, port_name, default in (("COURIER_LISTEN", "http", "127.0.0.1:8080"),
                                    ("COURIER_ADMIN_LISTEN", "admin", "127.0.0.1:9090")):
        host, port = courier.listen_port(env.get(var), default)
        if courier.is_loopback(host):
            problem(f"{var} is {host}: a loopback address is unreachable from outside the pod")
        if ports.get(port_name) != port:
            problem(f"{var} listens on port {port}, but containerPort {port_name!r} is {ports.get(port_name)}")
    admin_host, _ = courier.listen_port(env.get("COURIER_ADMIN_LISTEN"), "127.0.0.1:9090")
    if not courier.is_loopback(admin_host) and not {"COURIER_ADMIN_TOKEN", "COURIER_ADMIN_TOKEN_FILE"} & set(env):
        problem("the admin listener is not on loopback and no COURIER_ADMIN_TOKEN(_FILE) is set: courier refuses to start")

    deploy_overlay_tls.check(env, container, volumes, mounts, secrets, docs, problem)

    # Probes: the admin listener's paths, as courier serves them.
    routes = courier.admin_routes()
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet")
        if not get:
            problem(f"no {probe} with httpGet")
            continue
        if get.get("path") != path or path not in routes:
            problem(f"{probe} asks {get.get('path')}; it should ask {path}, served by src/http/admin.rs")
        if get.get("port") not in ("admin", ports.get("admin")):
            problem(f"{probe} asks port {get.get('port')}, not the admin listener")

    # The shutdown arithmetic.
    sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if not sleep:
        problem("no preStop sleep: a rollout would stop the pod while Services still send it connections")
    budget = spec.get("terminationGracePeriodSeconds", 30)
    for line in courier.grace_problems(where, budget, sleep, env, "terminationGracePeriodSeconds"):
        problems.append(line)

    # Security context (pod and container) and resources.
    merged = dict(spec.get("securityContext", {}), **container.get("securityContext", {}))
    for field, value in SECURITY.items():
        if merged.get(field) != value:
            problem(f"securityContext.{field} is {merged.get(field)!r}, expected {value!r}")
    if merged.get("capabilities", {}).get("drop") != ["ALL"]:
        problem("securityContext.capabilities.drop is not [ALL]")
    if merged.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem("securityContext.seccompProfile.type is not RuntimeDefault")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(part, {}):
                problem(f"no {part}.{resource}")
    cpu_limit = resources.get("limits", {}).get("cpu")
    if cpu_limit and int(env.get("COURIER_WORKERS", "0") or 0) != math.ceil(cpu_cores(cpu_limit)):
        problem(f"COURIER_WORKERS is {env.get('COURIER_WORKERS')}, not the CPU limit ({cpu_limit})")

    image = container.get("image", "")
    if not image.endswith(":" + courier.cargo_version()):
        problem(f"image {image} is not tagged with courier's version {courier.cargo_version()} (Cargo.toml)")

    # Everything that selects the pods selects these pods.
    for doc in docs:
        kind = doc["kind"]
        if kind == "Service":
            if not selects(doc["spec"].get("selector"), labels):
                problem(f"Service {doc['metadata']['name']} does not select courier's pods")
            for port in doc["spec"]["ports"]:
                if port.get("targetPort") not in ports:
                    problem(f"Service {doc['metadata']['name']} targets port {port.get('targetPort')}, not a container port name")
        elif kind in ("PodDisruptionBudget", "PodMonitor"):
            if not selects(doc["spec"].get("selector"), labels):
                problem(f"{kind} {doc['metadata']['name']} does not select courier's pods")
        elif kind == "NetworkPolicy" and not selects(doc["spec"].get("podSelector"), labels):
            problem(f"NetworkPolicy {doc['metadata']['name']} does not select courier's pods")
    for monitor in by_kind(docs, "PodMonitor"):
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            if endpoint.get("port") != "admin" or endpoint.get("path", "/metrics") != "/metrics":
                problem("the PodMonitor does not scrape /metrics on the admin port")
    policies = by_kind(docs, "NetworkPolicy")
    admin_from = [peer for p in policies for rule in p["spec"].get("ingress", [])
                  if any(port.get("port") in ("admin", ports.get("admin")) for port in rule.get("ports", []))
                  for peer in rule.get("from", [])]
    if not admin_from or any("namespaceSelector" not in peer for peer in admin_from):
        problem("the NetworkPolicy must let only a namespace (monitoring) reach the admin port")

    check_replicas(SHAPE.get(overlay, overlay), docs, deployment, env, policies, problem)


def check_replicas(overlay, docs, deployment, env, policies, problem):
    """What each overlay promises about replicas and shared state."""
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    redis = {"REDIS_URL", "REDIS_URL_FILE"} & set(env)
    if overlay == "single":
        if deployment["spec"].get("replicas") != 1:
            problem("overlays/single must run exactly one replica (its jobs live in the pod's memory)")
        if hpas:
            problem("overlays/single must have no autoscaler: its in-process job store cannot be shared")
        if redis:
            problem("overlays/single sets REDIS_URL: that is overlays/redis")
        if "COURIER_STATE_DIR" not in env:
            problem("no COURIER_STATE_DIR: EXTERNAL_API_QUOTAS would need one (the quota counts' file)")
        return
    if "REDIS_URL_FILE" not in env:
        problem("no REDIS_URL_FILE: the replicas would not share budget, token and jobs")
    if "replicas" in deployment["spec"]:
        problem("the Deployment sets replicas: the autoscaler owns that number")
    if len(hpas) != 1:
        return problem(f"expected one HorizontalPodAutoscaler, found {len(hpas)}")
    hpa = hpas[0]["spec"]
    if hpa["scaleTargetRef"].get("name") != deployment["metadata"]["name"]:
        problem("the autoscaler does not scale courier's Deployment")
    if str(hpa.get("maxReplicas")) != env.get("COURIER_REPLICAS"):
        problem(f"COURIER_REPLICAS ({env.get('COURIER_REPLICAS')}) is not the autoscaler's maxReplicas "
                f"({hpa.get('maxReplicas')}): if Redis fails before their first heartbeat, replicas could together exceed the upstream's limit")
    if hpa.get("minReplicas", 1) < 2:
        problem("the autoscaler's minReplicas is below 2: one replica is overlays/single")
    egress_ports = {port.get("port") for p in policies for rule in p["spec"].get("egress", []) for port in rule.get("ports", [])}
    if 6379 not in egress_ports:
        problem("no NetworkPolicy egress to Redis (port 6379)")
