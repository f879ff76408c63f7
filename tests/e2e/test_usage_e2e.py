"""Usage counts of real server processes sharing one store: each process (and each worker) counts
in memory and adds its counts with each flush, so the report sums every process's verdicts."""

from __future__ import annotations

import time

from tests.e2e.conftest import http


def test_usage_counts_of_two_servers_on_one_store_are_summed(start_server):
    env = {"KEYLEDGER_LAST_USED_INTERVAL": "0.2"}
    first = start_server(env=env, workers=2, name="first")
    second = start_server(data_dir=first.data_dir, env=env, name="second")
    admin = first.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = first.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"}, token=admin).json
    assert first.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"]).status == 201
    created = first.post("/v2/apps/vision/keys", {"description": "web", "scopes": ["Predict"]}, token=owner["token"])
    assert created.status == 201
    key = created.json
    first.remember(key["key"])
    deadline = time.monotonic() + 10  # the second server learns of the key within its follow interval
    while second.post("/v2/verify", {"key": key["key"], "scope": "Predict"}).json["code"] != "VALID":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sent = {"first": [0, 0], "second": [1, 0]}  # [valid, INSUFFICIENT_SCOPE]; one valid above
    for name, server in (("first", first), ("second", second)):
        for i in range(30):
            scope = "Predict" if i % 3 else "Models:Add"
            code = server.post("/v2/verify", {"key": key["key"], "scope": scope}).json["code"]
            sent[name][0 if scope == "Predict" else 1] += 1
            assert code == ("VALID" if scope == "Predict" else "INSUFFICIENT_SCOPE")
        # forward-auth counts too
        answer = http("GET", server.url + "/v2/auth/check?scope=Predict", token=key["key"])
        assert answer.status == 200, answer
        sent[name][0] += 1
    valid = sent["first"][0] + sent["second"][0]
    refused = sent["first"][1] + sent["second"][1]
    deadline = time.monotonic() + 15
    while True:
        report = first.get(f"/v2/keys/{key['id']}/usage", token=owner["token"])
        assert report.status == 200, report
        got = (sum(p["valid"] for p in report.json["periods"]),
               sum(p["refused"].get("INSUFFICIENT_SCOPE", 0) for p in report.json["periods"]))
        if got == (valid, refused) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == (valid, refused)
    # both servers answer the same once every process has flushed
    again = second.get(f"/v2/keys/{key['id']}/usage", token=owner["token"]).json
    assert sum(p["valid"] for p in again["periods"]) == valid
