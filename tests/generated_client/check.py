"""Uses the Python client that openapi-python-client generated from courier's /openapi.json
against a running `courier demo`: sync requests with every kind of input, an async request with
a callback to the simulator's sink, and status lookups. Run by scripts/generated-client; exits
non-zero, saying why, on anything unexpected.

usage: check.py GATEWAY_ADDR CLIENT_KEY SIMULATOR_ADDR
"""

import json
import secrets
import sys
import time
import urllib.request

import httpx

from courier_client import AuthenticatedClient
from courier_client.api.process import process
from courier_client.api.status import status
from courier_client.models import (
    Accepted,
    DeliveryState,
    JobStatus,
    ProcessData,
    ProcessDataInputObject,
    ProcessOptions,
    ProcessRequest,
    ProcessResult,
    StatusDoc,
)

gateway, key, simulator = sys.argv[1:4]
client = AuthenticatedClient(
    base_url=f"http://{gateway}", token=key, raise_on_unexpected_status=True, timeout=httpx.Timeout(30.0)
)


def fail(message):
    print(f"generated client FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def expect(answer, kind, what):
    if not isinstance(answer.parsed, kind):
        fail(f"{what}: HTTP {answer.status_code}, expected {kind.__name__}: {answer.content[:500]!r}")
    return answer.parsed


# Sync requests: every kind of input the schema allows (any JSON value but null). The simulator
# upper-cases a string and the compact JSON of anything else.
inputs = [
    ("hello courier", "HELLO COURIER"),
    (42, "42"),
    (2.5, "2.5"),
    (True, "TRUE"),
    ([1, "b", None], '[1,"B",NULL]'),
    (ProcessDataInputObject.from_dict({"a": 1, "b": {"c": [True]}}), '{"A":1,"B":{"C":[TRUE]}}'),
]
sync_ids = []
for given, processed in inputs:
    body = ProcessRequest(data=ProcessData(input_=given, format_="json"))
    done = expect(process.sync_detailed(client=client, body=body), ProcessResult, f"sync request with {given!r}")
    if done.result.get("processed_data") != processed:
        fail(f"sync request with {given!r}: processed_data {done.result!r}, expected {processed!r}")
    sync_ids.append(done.request_id)

# A sync request's id can be looked up too.
looked_up = expect(status.sync_detailed(sync_ids[0], client=client), StatusDoc, "status of a sync request")
if looked_up.status != JobStatus.COMPLETED:
    fail(f"status of sync request {sync_ids[0]}: {looked_up.status}")

# An async request with a callback to the simulator's sink: 202, then completed, callback delivered.
job_id = f"generated-client-{secrets.token_hex(6)}"
body = ProcessRequest(
    data=ProcessData(input_="later"),
    options=ProcessOptions(async_=True, callback_url=f"http://{simulator}/_sim/callbacks"),
)
accepted = expect(process.sync_detailed(client=client, body=body, x_request_id=job_id), Accepted, "async request")
if (accepted.request_id, accepted.status) != (job_id, JobStatus.PENDING):
    fail(f"async request: accepted {accepted.request_id} as {accepted.status}")

lookups = 0
deadline = time.monotonic() + 30
while True:
    doc = expect(status.sync_detailed(job_id, client=client), StatusDoc, f"status of {job_id}")
    lookups += 1
    delivered = doc.callback and doc.callback.state == DeliveryState.DELIVERED
    if doc.status == JobStatus.COMPLETED and delivered:
        break
    if doc.status == JobStatus.FAILED or time.monotonic() > deadline:
        fail(f"job {job_id} did not complete with its callback delivered: {json.dumps(doc.to_dict())}")
    time.sleep(0.05)
if doc.result.get("processed_data") != "LATER":
    fail(f"job {job_id}: result {doc.result!r}")

with urllib.request.urlopen(f"http://{simulator}/_sim/callbacks", timeout=10) as answer:
    sink = json.load(answer)
got = [c for c in sink["callbacks"] if c["request_id"] == job_id]
if len(got) != 1 or not got[0]["verified"]:
    fail(f"the simulator's sink did not get one verified callback for {job_id}: {got}")

print(
    f"generated client: {len(inputs)} sync requests (string, integer, float, boolean, array, object input), "
    f"1 async request completed with its callback delivered and verified, {lookups + 1} status lookups"
)
