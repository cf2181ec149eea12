"""JSON schemas for the two Prometheus Operator objects courier ships (monitoring.coreos.com/v1).

No Kubernetes API schema knows a custom resource, so kubernetes-validate cannot check these.
These schemas are written here, from the operator's CRD reference, for the fields courier's
manifests use, with the types and forms the operator's CRDs give them; any other field is
refused, so a misspelt or misplaced key fails instead of being dropped by the API server's
pruning. They are a subset: a field the operator accepts but courier does not use fails here too,
and is added here when the manifests start using it.
"""

# The operator's duration form (monitoringv1.Duration).
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

DNS_NAME = {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}

METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": DNS_NAME,
        "namespace": DNS_NAME,
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
}

LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

# A key of a Secret or ConfigMap in the monitor's namespace (SecretKeySelector, ConfigMapKeySelector).
KEY_SELECTOR = {
    "type": "object",
    "required": ["key"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "key": {"type": "string", "minLength": 1}, "optional": {"type": "boolean"}},
}

# SecretOrConfigMap: exactly one of the two.
SECRET_OR_CONFIGMAP = {
    "type": "object",
    "additionalProperties": False,
    "oneOf": [{"required": ["secret"]}, {"required": ["configMap"]}],
    "properties": {"secret": KEY_SELECTOR, "configMap": KEY_SELECTOR},
}

# SafeTLSConfig, the scrape's TLS settings (a PodMonitor cannot name files of Prometheus's pod).
SAFE_TLS_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ca": SECRET_OR_CONFIGMAP,
        "cert": SECRET_OR_CONFIGMAP,
        "keySecret": KEY_SELECTOR,
        "serverName": {"type": "string"},
        "insecureSkipVerify": {"type": "boolean"},
    },
}

POD_METRICS_ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": {"type": "boolean"},
        "tlsConfig": SAFE_TLS_CONFIG,
    },
}


def operator_object(kind, required, properties):
    """The schema of a Prometheus Operator object of `kind` whose spec has these properties."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": {"type": "object", "required": required, "additionalProperties": False, "properties": properties},
        },
    }


POD_MONITOR = operator_object("PodMonitor", ["selector", "podMetricsEndpoints"], {
    "selector": LABEL_SELECTOR,
    "jobLabel": {"type": "string"},
    "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": POD_METRICS_ENDPOINT},
})

RULE = {
    "type": "object",
    "required": ["expr"],
    "additionalProperties": False,
    # A rule is an alerting rule or a recording rule, not both.
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "minLength": 1},
        "expr": {"type": ["string", "integer"]},
        "for": DURATION,
        "keep_firing_for": DURATION,
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
}

PROMETHEUS_RULE = operator_object("PrometheusRule", ["groups"], {
    "groups": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "rules"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "interval": DURATION,
                "rules": {"type": "array", "items": RULE},
            },
        },
    },
})

SCHEMAS = {"PodMonitor": POD_MONITOR, "PrometheusRule": PROMETHEUS_RULE}
