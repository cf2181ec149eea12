"""Checks of the rendered Kubernetes manifests, for scripts/deploy-check.

    python deploy_manifests.py OVERLAY=RENDERED.yaml ... --secrets RENDERED.yaml --versions 1.30.0,1.37.0

OVERLAY is single or redis (deploy/kubernetes/overlays/), or tls (examples/tls: overlays/redis
with components/tls and components/tls-client-ca).

Runs in the venv that holds kubernetes-validate (and so PyYAML and jsonschema). For each
rendered overlay:
- every built-in object is validated, strictly (unknown fields refused), against the Kubernetes
  API schemas of each version given (kubernetes-validate);
- the Prometheus Operator's objects (PodMonitor, PrometheusRule), which no Kubernetes schema
  knows, are validated against the small schemas in deploy_crds.py, and the PrometheusRule's
  spec must equal grafana/alerts/courier.rules.yml (it is written to a file for promtool);
- the manifests must fit courier itself (deploy_overlay.py, deploy_courier.py): variable names, ports, probe paths,
  the shutdown arithmetic, the replica settings, the quota state directory, the security context,
  and with TLS the certificate files, the probes' and the PodMonitor's scheme.
Every problem is printed, one line each, and the exit code is 1 if there was any.
"""

import os
import sys

import jsonschema
import kubernetes_validate
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_crds  # noqa: E402
import deploy_overlay  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, "grafana/alerts/courier.rules.yml")


def load(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_builtin(doc, versions, problems, where):
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problems.append(f"{where}: {name_of(doc)} is not valid for Kubernetes {version} at {path or '(top)'}: "
                            f"{error.message}")
        except Exception as error:  # no schema for it, an unsupported version, a broken schema
            problems.append(f"{where}: {name_of(doc)}: cannot be validated for Kubernetes {version}: "
                            f"{getattr(error, 'message', None) or type(error).__name__}")


def validate_crd(doc, problems, where):
    schema = deploy_crds.SCHEMAS[doc["kind"]]
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in error.path)
        if error.validator == "oneOf":
            message = "exactly one of " + " and ".join(choice["required"][0] for choice in error.validator_value)
        else:
            message = error.message
        problems.append(f"{where}: {name_of(doc)} does not fit the operator's schema at {path or '(top)'}: {message}")


def check_rules(docs, problems, where, rules_out):
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        problems.append(f"{where}: expected one PrometheusRule, found {len(rules)}")
        return
    with open(RULES, encoding="utf-8") as f:
        wanted = yaml.safe_load(f)
    if rules[0].get("spec") != wanted:
        problems.append(f"{where}: the PrometheusRule's spec differs from grafana/alerts/courier.rules.yml "
                        "(run python3 scripts/gen-prometheusrule)")
    with open(rules_out, "w", encoding="utf-8") as f:
        yaml.safe_dump(rules[0].get("spec"), f, sort_keys=False)


def main(argv):
    overlays, secrets, versions, rules_dir = {}, None, [], None
    args = iter(argv)
    for arg in args:
        if arg == "--secrets":
            secrets = next(args)
        elif arg == "--versions":
            versions = next(args).split(",")
        elif arg == "--rules-dir":
            rules_dir = next(args)
        else:
            overlay, _, path = arg.partition("=")
            overlays[overlay] = path
    if not overlays or not secrets or not versions or not rules_dir:
        sys.exit("usage: deploy_manifests.py OVERLAY=FILE... --secrets FILE --versions V,V --rules-dir DIR")
    problems = []
    secret_docs = load(secrets)
    for doc in secret_docs:
        validate_builtin(doc, versions, problems, "examples/secrets")
    counts = {}
    for overlay, path in overlays.items():
        where = deploy_overlay.WHERE.get(overlay, f"overlays/{overlay}")
        docs = load(path)
        for doc in docs:
            if doc.get("kind") in deploy_crds.SCHEMAS:
                validate_crd(doc, problems, where)
            else:
                validate_builtin(doc, versions, problems, where)
        check_rules(docs, problems, where, os.path.join(rules_dir, f"{overlay}.rules.yml"))
        deploy_overlay.check_overlay(overlay, docs, secret_docs, problems)
        counts[overlay] = len(docs)
    for problem in problems:
        print(f"deploy-check: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    summary = ", ".join(f"{name}: {n} objects" for name, n in counts.items())
    print(f"manifests valid for Kubernetes {', '.join(versions)} (kubernetes-validate "
          f"{kubernetes_validate.__version__}, strict); "
          f"operator objects valid; courier's settings fit ({summary})")


if __name__ == "__main__":
    main(sys.argv[1:])
