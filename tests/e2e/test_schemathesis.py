"""/openapi.json is true to the server: schemathesis over a real server process, as admin and as owner.

Every check (status codes, content types, response schemas, positive- and negative-data
acceptance, missing credentials, ...) over every operation, in every phase (the schema's
examples, coverage, fuzzing, and the stateful phase that follows the document's links), with a
bounded number of examples and a fixed seed. Zero failures, zero 5xx, and no secret-shaped
string in the server's log.

Where the contract answers 400 to a request that no schema can call invalid (an `expires_at`
already past, a cursor the server did not give out) the configuration below says so for
that operation alone; likewise 412 for an `If-Match` version that is well-formed but no
longer current, and 422 for an `Idempotency-Key` the fuzzer sends again with another request.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import SECRET

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
MAX_EXAMPLES = int(os.environ.get("KEYLEDGER_SCHEMATHESIS_EXAMPLES", "8"))
SEED = os.environ.get("KEYLEDGER_SCHEMATHESIS_SEED", "20171201")

# 412: a well-formed If-Match that is no longer the key's version (the contract's answer)
# 422 IDEMPOTENCY_KEY_REUSED: the fuzzer sends the few short Idempotency-Keys it makes up ("0")
# with different requests; refusing the second request is the contract (only POSTs declare it)
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "412", "422", "429"]
CONFIG = f"""
[checks.positive_data_acceptance]
expected-statuses = {ACCEPTED!r}

[[operations]]
include-path = "/v2/apps/{{app_id}}/keys"
include-method = "POST"
# 400 INVALID_EXPIRY: an expires_at that is not in the future (no schema can say "after now")
checks.positive_data_acceptance.expected-statuses = {ACCEPTED + ["400"]!r}

[[operations]]
include-path-regex = "^/v2/(keys/{{key_id}}|apps/{{app_id}})$"
include-method = "PATCH"
# 400: rate limits that each fit the Limit schema but not together (a period given twice: 1m and
# 60s) or a period over 365 days (the pattern cannot count days); a client restriction no pattern
# can fully judge (a browser pattern whose wildcard would match every site such as https://*.co.uk,
# a CIDR block with bits beyond its prefix)
checks.positive_data_acceptance.expected-statuses = {ACCEPTED + ["400"]!r}

[[operations]]
include-path = "/v2/audit/access"
# 400: an `ip` that is not an IPv4 or IPv6 address (no pattern of a query parameter says exactly that)
checks.positive_data_acceptance.expected-statuses = {ACCEPTED + ["400"]!r}
# 414: nine query parameters at their longest, percent-encoded, exceed the server's request line
# (4,094 bytes): refused as too long before any parameter is judged, which is still a refusal
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "406", "414", "422", "428"]

[[operations]]
include-path = "/v2/keys/{{key_id}}/usage"
# 400: `since` after `until`, or a span longer than the granularity allows (31 days by the hour,
# 731 by the day): two valid times can be either, and no schema compares two parameters
checks.positive_data_acceptance.expected-statuses = {ACCEPTED + ["400"]!r}

[[operations]]
include-path-regex = "^/v2/webhooks"
# 400: a URL that fits the schema but points at a refused address (loopback, private, link-local:
# resolved at registration for literal addresses), an app id that is not the caller's, a delivery
# log cursor the server did not give out
checks.positive_data_acceptance.expected-statuses = {ACCEPTED + ["400"]!r}

[[operations]]
include-path-regex = "^/v2/audit/events"
# 400: a cursor must be one the server gave out (opaque, signed by the server)
checks.positive_data_acceptance.expected-statuses = {ACCEPTED + ["400"]!r}
"""


def run_schemathesis(server, token: str, workdir: Path) -> subprocess.CompletedProcess:
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    return subprocess.run(
        [str(SCHEMATHESIS), "--config-file", str(config), "run", server.url + "/openapi.json",
         "-H", f"Authorization: Key {token}", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
         "--seed", SEED, "--no-color", "--suppress-health-check", "all"],
        capture_output=True, text=True, cwd=workdir, timeout=600,
        env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})


def summary(output: str) -> str:
    return "\n".join(line for line in output.splitlines()
                     if re.search(r"ST\d{3}|generated|failures|Tested|^___|Invalid component", line))


@pytest.mark.parametrize("role", ["admin", "owner"])
def test_the_server_keeps_every_promise_of_its_openapi_document(start_server, tmp_path, role):
    # follow=true streams the audit feed until its limit: a second here, not an hour
    server = start_server(env={"KEYLEDGER_LEGACY_SUNSET_AT": "2099-01-01T00:00:00Z",
                               "KEYLEDGER_AUDIT_FOLLOW_LIMIT": "1s", "KEYLEDGER_AUDIT_HEARTBEAT": "1s"})
    account = server.create_account(role, f"{role}@example.com", role.title())

    done = run_schemathesis(server, account["token"], tmp_path)

    assert done.returncode == 0, f"schemathesis as {role}:\n{summary(done.stdout)}\n{done.stdout[-6000:]}"
    counts = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 500, done.stdout[-3000:]
    assert "Stateful" in done.stdout and "✅ Stateful" in done.stdout, summary(done.stdout)
    log = server.log_path.read_text("utf-8", "replace")
    assert not SECRET.findall(log), "a credential-shaped string reached the server's log"
    assert "Traceback" not in log
