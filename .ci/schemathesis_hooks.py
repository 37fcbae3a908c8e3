"""schemathesis hooks for forewarn's CI run: sign the provider webhooks the way the providers do,
so generated SMS replies, status callbacks and inbound e-mails reach forewarn's handling of them
instead of stopping at the signature check (403).

- Twilio: `X-Twilio-Signature` computed by the official `twilio` library's RequestValidator
  (HMAC-SHA1 of the URL and the sorted form parameters, keyed with the auth token).
- Mailgun: `timestamp`, a fresh one-time `token` and `signature` (HMAC-SHA256 of timestamp +
  token, keyed with the webhook signing key) set in the form. Against `forewarn demo` these stay
  refused (403, documented): the demo runs on a simulated clock, hours per second, so no wall-clock
  timestamp is within `notify.inbound_email_max_age` of its "now".

Cases whose body is not a form of strings (negative cases) are sent as generated: forewarn must
refuse them with a documented answer.

Reads and ticket transitions also get, in half of the cases, the id of a record that exists (a
random id only ever reaches the 404 path). Writes never do: a generated device or customer must
not replace one of the demo's, whose tickets notify real channels (the local sink), so a PUT whose
generated id happens to name an existing record is moved to a fresh id.
"""

import hashlib
import hmac
import json
import os
import random
import time
import urllib.request
import uuid

import schemathesis
from twilio.request_validator import RequestValidator

BASE = os.environ["FOREWARN_ST_BASE"]
TWILIO_TOKEN = os.environ["FOREWARN_ST_TWILIO_TOKEN"]
MAILGUN_KEY = os.environ["FOREWARN_ST_MAILGUN_KEY"]

TOKEN = os.environ["FOREWARN_ST_TOKEN"]

TWILIO_PATHS = ("/notify/v1/twilio/sms", "/notify/v1/twilio/status")
FORM = "application/x-www-form-urlencoded"


def _ids(path):
    req = urllib.request.Request(BASE + path, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(req, timeout=20) as r:
        return [x["id"] for x in json.load(r)]


REAL = {
    # Live tickets first: a transition on a closed one only ever reaches the 409 path.
    "tickets": _ids("/api/v1/tickets?status=open&limit=50")
    + _ids("/api/v1/tickets?status=acknowledged&limit=20")
    + _ids("/api/v1/tickets?limit=20"),
    "devices": _ids("/api/v1/devices"),
    "customers": _ids("/api/v1/customers"),
}
# Which real ids a path's `{id}` may take, for reads and transitions.
READS = {
    "/api/v1/tickets/{id}": "tickets",
    "/api/v1/tickets/{id}/transitions": "tickets",
    "/api/v1/tickets/{id}/slots": "tickets",
    "/api/v1/tickets/{id}/assignment": "tickets",
    "/api/v1/tickets/{id}/proposal": "tickets",
    "/api/v1/tickets/{id}/visit": "tickets",
    "/api/v1/devices/{id}": "devices",
    "/api/v1/customers/{id}": "customers",
    "/api/v1/customers/{id}/timeline": "customers",
}
RNG = random.Random(20261126)


def _real_ids(case):
    params = case.path_parameters
    if not isinstance(params, dict) or "id" not in params:
        return
    kind = READS.get(case.path)
    if case.method.upper() == "PUT":
        taken = REAL["devices"] + REAL["customers"]
        if params["id"] in taken:
            params["id"] = "st-" + uuid.uuid4().hex[:12]
            body = case.body
            if isinstance(body, dict) and "id" in body:
                body["id"] = params["id"]
    elif kind and REAL[kind] and RNG.random() < 0.5:
        params["id"] = RNG.choice(REAL[kind])


def _string_form(case):
    body = case.body
    if case.media_type != FORM or not isinstance(body, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in body.items()):
        return None
    return body


@schemathesis.hook
def before_call(context, case, kwargs):
    _real_ids(case)
    form = _string_form(case)
    if form is None:
        return
    if case.path in TWILIO_PATHS:
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(BASE + case.path, form)
        if case.headers is None:
            case.headers = {}
        case.headers["X-Twilio-Signature"] = signature
    elif case.path == "/notify/v1/email/inbound":
        timestamp = str(int(time.time()))
        token = uuid.uuid4().hex
        form["timestamp"] = timestamp
        form["token"] = token
        form["signature"] = hmac.new(
            MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256
        ).hexdigest()
