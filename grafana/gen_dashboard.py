#!/usr/bin/env python3
"""Generates grafana/provisioning/dashboards/courier.json (the dashboard is code: edit here, then
run: python3 grafana/gen_dashboard.py > grafana/provisioning/dashboards/courier.json)."""
import json
import re
import urllib.parse

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
I = 'instance=~"$instance"'
R = '$__rate_interval'
panels = []
pid = [0]
y = [0]

def nid():
    pid[0] += 1
    return pid[0]

def row(title):
    panels.append({"type": "row", "title": title, "id": nid(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1

def explore(pane):
    """A link into Grafana Explore showing `pane`. The pane's JSON is percent-encoded, all but its
    ${...} placeholders, which Grafana fills in when the link is clicked (quoted, they would not be
    recognised)."""
    text = json.dumps(pane, separators=(",", ":"))
    found = re.findall(r"\$\{[^}]+\}", text)
    for i, placeholder in enumerate(found):
        text = text.replace(placeholder, f"PLACEHOLDER{i}X", 1)
    quoted = urllib.parse.quote(text, safe="")
    for i, placeholder in enumerate(found):
        quoted = quoted.replace(f"PLACEHOLDER{i}X", placeholder, 1)
    return "/explore?schemaVersion=1&orgId=${__org}&panes=" + quoted

RANGE = {"from": "${__from}", "to": "${__to}"}

def trace_links(traceql, jaeger):
    """The two data links of a latency panel: traces at least as slow as the clicked point, of the
    service ${trace_service}, in Tempo (`traceql`: the TraceQL conditions after the service and
    before the duration) and in Jaeger (`jaeger`: operation and tags of its search)."""
    service = 'resource.service.name="${trace_service}"'
    query = "{" + " && ".join([service] + traceql + ["duration >= ${__value.raw}s"]) + "}"
    tempo = {"t": {"datasource": "${DS_TEMPO}", "range": RANGE, "queries": [
        {"refId": "A", "datasource": {"type": "tempo", "uid": "${DS_TEMPO}"}, "queryType": "traceql",
         "query": query, "limit": 20}]}}
    search = {"refId": "A", "datasource": {"type": "jaeger", "uid": "${DS_JAEGER}"}, "queryType": "search",
              "service": "${trace_service}", "minDuration": "${__value.raw}s", "limit": 20}
    search.update(jaeger)
    return [{"title": "Slow traces in Tempo", "url": explore(tempo), "targetBlank": False},
            {"title": "Slow traces in Jaeger", "url": explore({"j": {"datasource": "${DS_JAEGER}", "range": RANGE,
                                                                     "queries": [search]}}),
             "targetBlank": False}]

x = [0]
def panel(title, targets, kind="timeseries", unit="short", w=8, h=8, description="", extra=None, links=None):
    if x[0] + w > 24:
        x[0] = 0
        y[0] += h
    p = {
        "type": kind, "title": title, "id": nid(), "datasource": DS, "description": description,
        "gridPos": {"h": h, "w": w, "x": x[0], "y": y[0]},
        "fieldConfig": {"defaults": {"unit": unit, **({"links": links} if links else {})}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                    for i, (e, l) in enumerate(targets)],
    }
    if extra:
        p.update(extra)
    panels.append(p)
    x[0] += w
    if x[0] >= 24:
        x[0] = 0
        y[0] += h

def endrow():
    if x[0] != 0:
        x[0] = 0
        y[0] += 8

row("Traffic (RED)")
panel("Requests per second by route and status",
      [(f'sum by (route, status) (rate(courier_http_requests_total{{{I}, client=~"$client"}}[{R}]))', "{{route}} {{status}}")],
      unit="reqps", description="Inbound requests answered, by route and status code.")
panel("Error ratio (5xx)",
      [(f'(sum(rate(courier_http_requests_total{{{I}, client=~"$client", status=~"5.."}}[{R}])) or vector(0)) / sum(rate(courier_http_requests_total{{{I}, client=~"$client"}}[{R}]))', "5xx / all")],
      unit="percentunit", description="Share of inbound answers that were 5xx (upstream failing, circuit open, auth unavailable).")
panel("Latency p50 / p99 by route",
      [(f'histogram_quantile(0.5, sum by (le, route) (rate(courier_http_request_duration_seconds_bucket{{{I}, client=~"$client"}}[{R}])))', "p50 {{route}}"),
       (f'histogram_quantile(0.99, sum by (le, route) (rate(courier_http_request_duration_seconds_bucket{{{I}, client=~"$client"}}[{R}])))', "p99 {{route}}")],
      unit="s", description="Time to answer, from courier's point of view.",
      links=trace_links(['kind=server', 'span.courier.route="${__field.labels.route}"'],
                        {"tags": "span.kind=server courier.route=${__field.labels.route}"}))
panel("Requests per second by client",
      [(f'sum by (client, status) (rate(courier_http_requests_total{{{I}, client=~"$client"}}[{R}]))', "{{client}} {{status}}")],
      unit="reqps", w=12, description="Who is calling, and what they get.")
panel("Latency p99 by status class",
      [(f'histogram_quantile(0.99, sum by (le, status_class) (rate(courier_http_request_duration_seconds_bucket{{{I}, client=~"$client"}}[{R}])))', "p99 {{status_class}}")],
      unit="s", w=12, description="Fast failures should stay fast.",
      links=trace_links(["kind=server"], {"tags": "span.kind=server"}))
endrow()

row("Upstream health")
panel("Upstream attempts by outcome",
      [(f'sum by (outcome) (rate(courier_upstream_attempts_total{{{I}}}[{R}]))', "{{outcome}}")],
      unit="reqps", description="Every upstream attempt, retries included, by its classified outcome.")
panel("Upstream attempt latency",
      [(f'histogram_quantile(0.5, sum by (le) (rate(courier_upstream_attempt_duration_seconds_bucket{{{I}}}[{R}])))', "p50"),
       (f'histogram_quantile(0.99, sum by (le) (rate(courier_upstream_attempt_duration_seconds_bucket{{{I}}}[{R}])))', "p99")],
      unit="s", description="Duration of one upstream attempt, head and body.",
      links=trace_links(["kind=client"], {"tags": "span.kind=client"}))
panel("Retries and retry-budget refusals",
      [(f'sum by (reason) (rate(courier_upstream_retries_total{{{I}}}[{R}]))', "retry: {{reason}}"),
       (f'sum(rate(courier_retry_budget_refusals_total{{{I}}}[{R}]))', "refused by the retry budget")],
      unit="reqps", description="Retries by the outcome that caused them; failures returned instead of retried.")
endrow()

row("Rate budget")
panel("Upstream use vs limit",
      [(f'sum(rate(courier_upstream_attempts_total{{{I}}}[{R}]))', "attempts/s"),
       (f'sum(courier_budget_limit_requests_per_second{{{I}}})', "limit/s")],
      unit="reqps", description="Upstream attempts per second against the budget's rate (per instance; with Redis the limit is shared).")
panel("Permits available and queue depth",
      [(f'sum(courier_budget_permits_available{{{I}}})', "permits available"),
       (f'sum(courier_budget_queue_depth{{{I}}})', "waiting")],
      description="Free permits now, and requests waiting in the fair queue.")
panel("Budget rejections and learned pauses",
      [(f'sum by (reason) (rate(courier_budget_rejections_total{{{I}}}[{R}]))', "429 {{reason}}"),
       (f'sum by (source) (increase(courier_budget_pauses_total{{{I}}}[{R}]))', "pause {{source}}")],
      unit="short", description="Requests refused a permit (answered 429), and pauses learned from the upstream's 429 / rate headers.")
panel("Queue wait p50 / p99",
      [(f'histogram_quantile(0.5, sum by (le) (rate(courier_budget_wait_seconds_bucket{{{I}}}[{R}])))', "p50"),
       (f'histogram_quantile(0.99, sum by (le) (rate(courier_budget_wait_seconds_bucket{{{I}}}[{R}])))', "p99")],
      unit="s", w=12, description="Time requests waited for a permit.",
      links=trace_links(['name="courier.budget"'], {"operation": "courier.budget"}))
panel("Permits granted by path",
      [(f'sum by (path) (rate(courier_budget_grants_total{{{I}}}[{R}]))', "{{path}}")],
      unit="reqps", w=12, description="fast: free at once, lock-free; queued: after waiting.")
endrow()

row("Quotas")
# The upstream's quota windows (EXTERNAL_API_QUOTAS). max by (window): with Redis every replica
# exports the same fleet-wide count; without, each replica its own.
FORECAST = (f'courier_quota_used_requests{{{I}}} + clamp_min(deriv(courier_quota_used_requests{{{I}}}[1h]), 0)'
            f' * (courier_quota_reset_timestamp_seconds{{{I}}} - time())')
panel("Quota used and limit",
      [(f'max by (window) (courier_quota_used_requests{{{I}}})', "used {{window}}"),
       (f'max by (window) (courier_quota_limit_requests{{{I}}})', "limit {{window}}")],
      description="Upstream attempts counted in each window's current instance (reserved blocks included), and its limit (the configured one, or the upstream's when lower).")
panel("Quota forecast at reset",
      [(f'max by (window) ({FORECAST})', "forecast {{window}}"),
       (f'max by (window) (courier_quota_limit_requests{{{I}}})', "limit {{window}}")],
      description="Where each window's count ends at its reset if the last hour's pace goes on (the CourierQuotaExhaustionPredicted alert's expression), beside the limit.")
panel("Quota used by client",
      [(f'max by (window, client) (courier_quota_client_used_requests{{{I}, client=~"$client"}})', "{{client}} {{window}}")],
      description="Attempts counted for each client in each window's current instance (quota_max and quota_reserved of the clients file bound them).")
panel("Pacing target vs upstream attempts",
      [(f'min(courier_quota_pace_requests_per_second{{{I}}})', "pacing target/s"),
       (f'sum(rate(courier_upstream_attempts_total{{{I}}}[{R}]))', "attempts/s")],
      unit="reqps", w=12, description="The even pace that makes the tightest window last to its reset (remaining count over remaining time), against the attempts sent; with COURIER_QUOTA_PACING=even courier holds attempts to it.")
panel("Quota refusals by reason",
      [(f'sum by (reason) (rate(courier_quota_refusals_total{{{I}}}[{R}]))', "{{reason}}")],
      unit="reqps", w=12, description="Counts refused: window_spent, client_max, reserved (answered 429 quota_exhausted), unavailable (503 quota_unavailable: the quota store failed).")
endrow()

row("Circuit breaker")
panel("Breaker state",
      [(f'max by (state) (courier_breaker_state{{{I}}})', "{{state}}")],
      kind="state-timeline", w=12, description="1 for the current state: closed, open, half_open.",
      extra={"options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                         "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
             "fieldConfig": {"defaults": {"unit": "short", "mappings": [
                 {"type": "value", "options": {"0": {"text": "no", "color": "transparent"},
                                               "1": {"text": "yes", "color": "red"}}}]}, "overrides": []}})
panel("Transitions, fail-fast and mode",
      [(f'sum by (to) (increase(courier_breaker_transitions_total{{{I}}}[{R}]))', "to {{to}}"),
       (f'sum(rate(courier_breaker_rejections_total{{{I}}}[{R}]))', "failed fast /s"),
       (f'max by (mode) (courier_breaker_mode{{{I}}}) > 0', "mode {{mode}}")],
      w=12, description="State changes, requests answered 503 circuit_open, and the operator's mode.")
endrow()

row("Token lifecycle")
panel("Seconds until the token expires",
      [(f'min(courier_token_expires_in_seconds{{{I}}})', "expires in"),
       (f'min(courier_token_expiry_timestamp_seconds{{{I}}}) - time()', "from the expiry timestamp")],
      unit="s", w=12, description="Refreshes happen shortly before expiry; a falling line that crosses zero means refreshes fail.")
panel("Token refreshes by result",
      [(f'sum by (result) (increase(courier_token_refreshes_total{{{I}}}[{R}]))', "{{result}}"),
       (f'min(courier_ready{{{I}}})', "ready")],
      w=12, description="Requests to the token endpoint: success, rejected (credentials), failure.")
endrow()

row("Response cache")
panel("Hit ratio",
      [(f'sum(rate(courier_cache_lookups_total{{{I}, result=~"hit|coalesced|stale"}}[{R}])) / sum(rate(courier_cache_lookups_total{{{I}}}[{R}]))', "served without a call of their own")],
      unit="percentunit", description="Answers that cost no upstream call of their own.")
panel("Lookups by result",
      [(f'sum by (result) (rate(courier_cache_lookups_total{{{I}}}[{R}]))', "{{result}}")],
      unit="reqps", description="hit, miss, coalesced, stale, bypass.")
panel("Cache memory and evictions",
      [(f'sum(courier_cache_bytes{{{I}}})', "bytes"),
       (f'sum(courier_cache_entries{{{I}}})', "entries"),
       (f'sum by (cause) (increase(courier_cache_evictions_total{{{I}}}[{R}]))', "evicted: {{cause}}")],
      description="Bytes held (bounded by COURIER_CACHE_MAX_BYTES), entries, evictions by cause.")
endrow()

row("Async jobs and callbacks")
panel("Jobs by state",
      [(f'sum by (state) (courier_jobs{{{I}}})', "{{state}}"),
       (f'sum by (state) (increase(courier_jobs_finished_total{{{I}}}[{R}]))', "finished: {{state}}"),
       (f'sum(increase(courier_jobs_accepted_total{{{I}}}[{R}]))', "accepted")],
      description="Waiting and running jobs; jobs accepted and finished.")
panel("Job duration p50 / p99",
      [(f'histogram_quantile(0.5, sum by (le) (rate(courier_job_duration_seconds_bucket{{{I}}}[{R}])))', "p50"),
       (f'histogram_quantile(0.99, sum by (le) (rate(courier_job_duration_seconds_bucket{{{I}}}[{R}])))', "p99")],
      unit="s", description="From acceptance to the final state.",
      links=trace_links(['name="courier.job"'], {"operation": "courier.job"}))
panel("Callbacks",
      [(f'sum by (result) (increase(courier_callbacks_total{{{I}}}[{R}]))', "delivery: {{result}}"),
       (f'sum by (result) (increase(courier_callback_attempts_total{{{I}}}[{R}]))', "attempt: {{result}}")],
      description="Deliveries by result (delivered, gave_up, refused) and attempts by result.")
endrow()

row("Redis and the fleet")
panel("Shared state (Redis)", [(f'max by (instance, mode) (courier_shared_state{{{I}}}) > 0', "{{instance}}: {{mode}}")],
      kind="stat", w=8, description="off: no REDIS_URL; shared: budget, token, cache and jobs shared; degraded: Redis failing, this replica on its own.",
      extra={"options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                         "textMode": "name", "colorMode": "none", "graphMode": "none"}})
panel("Fleet size", [(f'courier_fleet_replicas{{{I}}}', "{{instance}}")], w=8,
      description="Replicas sharing Redis, as each replica's last heartbeat counted them: the budget's share "
      "while Redis fails is 1/this. Replicas that disagree for more than a few seconds see different Redis.")
panel("Redis errors by operation", [(f'sum by (operation) (rate(courier_redis_errors_total{{{I}}}[{R}]))', "{{operation}}")],
      unit="short", w=8, description="Failed or timed-out Redis calls per second: budget_*, token_*, cache_*, quota_*, "
      "fleet_* (shared state) and job_* (the job store). A failover shows as a burst of a few seconds; see "
      "CourierSharedStateDegraded.")
endrow()

row("Security")
panel("Failed authentications", [(f'sum by (reason, source_class) (rate(courier_auth_failures_total{{{I}}}[{R}]))', "{{reason}} from {{source_class}}")],
      unit="reqps", w=8, description="Requests refused 401 per second: no key (missing_key) or a key no client has (wrong_key), "
      "by the class of network they came from. The sources themselves are in /admin/state (lockouts.failing) and the "
      "auth_failed log lines; see CourierAuthFailuresHigh.")
panel("Sources locked out", [(f'sum by (instance) (courier_auth_locked_sources{{{I}}})', "locked now: {{instance}}"),
                             (f'sum by (event) (increase(courier_auth_lockout_events_total{{{I}}}[{R}]))', "{{event}}")],
      w=8, description="Sources locked out now (429 auth_locked_out before any key is compared), and lockouts begun "
      "and lifted. Lift one with DELETE /admin/lockouts/{source} on the admin listener.")
panel("Refusals by client and code", [(f'sum by (client, code) (increase(courier_http_refusals_total{{{I}, client=~"$client"}}[{R}])) > 0', "{{client}}: {{code}}")],
      w=8, description="Requests answered 4xx, by client and error code (only those with any): invalid requests "
      "(invalid_json, invalid_request, payload_too_large, unsupported_media_type), limits (budget_exhausted, "
      "quota_exhausted, client_concurrency_exceeded) and, for unknown callers, unauthorized and auth_locked_out. "
      "See CourierInvalidRequestsHigh.")
panel("Upstream spending against baseline", [(f'max by (client) (courier_client_spend_ratio{{{I}, client=~"$client"}})', "{{client}}")],
      w=12, description="Each client's upstream attempts per minute in the last interval over its own baseline "
      "(COURIER_SPEND_*); above COURIER_SPEND_ANOMALY_MULTIPLE is anomalous (CourierClientSpendAnomalous).")
panel("Upstream attempts per minute by client", [(f'sum by (client) (rate(courier_client_upstream_attempts_total{{{I}, client=~"$client"}}[{R}])) * 60', "{{client}}"),
                                                 (f'max by (client) (courier_client_spend_baseline_attempts_per_minute{{{I}, client=~"$client"}})', "baseline: {{client}}")],
      w=12, description="Attempts made for each client (retries included; a job's to its client), and the baseline "
      "they are compared with.")
panel("TLS certificates: time left", [(f'min by (instance, certificate) (courier_tls_certificate_expiry_timestamp_seconds{{{I}}} > 0) - time()', "{{instance}}: {{certificate}}")],
      unit="dtdurations", w=12, description="Until each listener's certificate in use (the earliest to expire in its "
      "file) ends: gateway, gateway_client_ca, admin; listeners without TLS are not shown. A renewed file loaded "
      "by courier resets it. See CourierTlsCertificateExpiringSoon and CourierTlsCertificateExpiringCritical.")
panel("TLS handshakes by result", [(f'sum by (result) (rate(courier_tls_handshakes_total{{{I}}}[{R}]))', "{{result}}")],
      unit="short", w=12, description="Handshakes on the gateway listener per second: ok, and refused for the caller's "
      "certificate (no_client_certificate, bad_client_certificate), protocol (incompatible), a timeout or anything "
      "else (failed). See CourierTlsHandshakesFailing.")
endrow()

row("Process")
panel("CPU", [(f'rate(process_cpu_seconds_total{{{I}}}[{R}])', "{{instance}}")], unit="percentunit", w=6,
      description="CPU seconds per second.")
panel("Resident memory", [(f'process_resident_memory_bytes{{{I}}}', "{{instance}}")], unit="bytes", w=6)
panel("Open file descriptors", [(f'process_open_fds{{{I}}}', "{{instance}}")], w=6)
panel("Version", [(f'count by (version, commit) (courier_build_info{{{I}}})', "{{version}} ({{commit}})")],
      kind="stat", w=6, description="The running version and the git commit it was built from.",
      extra={"options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                         "textMode": "name", "colorMode": "none", "graphMode": "none"}})
panel("Admin requests", [(f'sum by (outcome) (increase(courier_admin_requests_total{{{I}}}[{R}]))', "{{outcome}}")],
      w=12, description="Requests to locked admin routes by outcome: allowed (token), unlocked (no token set, "
      "loopback), missing_token and wrong_token (refused; see the CourierAdminTokenRefused alert).")
panel("Trace spans by result", [(f'sum by (result) (rate(courier_trace_spans_total{{{I}}}[{R}]))', "{{result}}")],
      unit="short", w=12, description="Spans sent to the OTLP endpoint (exported), refused by it or lost "
      "on the way (failed), and dropped because the export queue was full (dropped).")
endrow()

def var(name, query, label):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}

dashboard = {
    "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "", "type": "datasource",
                  "pluginId": "prometheus", "pluginName": "Prometheus"}],
    "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                   {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
    "uid": "courier-overview",
    "title": "courier",
    "description": "courier: traffic, upstream health, rate budget, quotas, circuit breaker, token, cache, async jobs, Redis and the fleet, security.",
    "tags": ["courier", "gateway"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "annotations": {"list": []},
    "links": [],
    "templating": {"list": [
        {"name": "DS_PROMETHEUS", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        var("instance", "label_values(courier_build_info, instance)", "Instance"),
        var("client", 'label_values(courier_http_requests_total{instance=~"$instance"}, client)', "Client"),
        # Where the latency panels' links look for traces: a datasource variable lists one plugin
        # type only, hence one for Tempo and one for Jaeger (an unused one simply stays empty).
        {"name": "DS_TEMPO", "label": "Traces (Tempo)", "type": "datasource", "query": "tempo",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        {"name": "DS_JAEGER", "label": "Traces (Jaeger)", "type": "datasource", "query": "jaeger",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        {"name": "trace_service", "label": "service.name", "type": "textbox", "query": "courier",
         "current": {"text": "courier", "value": "courier"}, "hide": 0},
    ]},
    "panels": panels,
}
print(json.dumps(dashboard, indent=2))
