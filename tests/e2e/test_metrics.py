"""``GET /metrics`` on a real server with two workers: Prometheus text that prometheus_client's
own parser reads, with every family the operator's alerts need, added up across workers."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.e2e.conftest import StartServer
from tests.webhooks.receiver import Receiver


def samples(text: str) -> dict[str, list]:
    """Samples by sample name (``…_count``, ``…_bucket``, ``…_total``) and by family name."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        found.setdefault(family.name, []).extend(family.samples)
        for sample in family.samples:
            if sample.name != family.name:
                found.setdefault(sample.name, []).append(sample)
    return found


def test_metrics_add_up_every_worker_and_show_each_family(start_server: StartServer) -> None:
    server = start_server(workers=2, env={"KEYLEDGER_LAST_USED_INTERVAL": "0.2"})
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = server.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                        token=admin).json["token"]
    all_key = server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).json["default_key"]["key"]
    for _ in range(30):
        assert server.get("/healthz").status == 200
    for _ in range(10):
        assert server.get("/v2/auth/check?scope=Predict", token=all_key).status == 200
        assert server.get("/v2/auth/check", token="ak_" + "0" * 38).status == 401
        assert server.post("/v2/verify", {"key": all_key, "scope": "Predict"}).status == 200
    time.sleep(1.0)  # a last-used flush (every 0.2 s here)
    answer = server.get("/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    found = samples(answer.body.decode())

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items()))

    # Requests by route and status, from both workers (a single worker's view would be short).
    assert value("keyledger_http_request_duration_seconds_count", route="/healthz", status="200") >= 30
    assert value("keyledger_http_request_duration_seconds_count", route="/v2/auth/check", status="200") >= 10
    assert value("keyledger_http_request_duration_seconds_count", route="/v2/auth/check", status="401") >= 10
    assert value("keyledger_http_request_duration_seconds_bucket", route="/healthz", le="+Inf") >= 30
    assert value("keyledger_verifications_total", code="VALID") >= 20
    assert value("keyledger_verifications_total", code="MALFORMED") >= 10
    assert value("keyledger_verification_index_credentials") >= 2
    assert value("keyledger_last_used_flushes_total") >= 1
    for family in ("keyledger_follower_lag_events", "keyledger_follower_lag_seconds",
                   "keyledger_views_last_update_age_seconds", "keyledger_store_errors_total"):
        assert family in found and found[family], family
    assert value("keyledger_follower_lag_events") >= 0
    assert "keyledger_verifications" in found and "keyledger_last_used_flushes" in found
    assert value("keyledger_store_errors_total") == 0
    assert value("keyledger_views_last_update_age_seconds") < 60


def test_webhook_deliveries_made_by_a_worker_s_scheduler_are_in_every_scrape(start_server: StartServer) -> None:
    server = start_server(workers=2, env={"KEYLEDGER_WEBHOOKS_ALLOW_PRIVATE": "1",
                                          "KEYLEDGER_SCHEDULER_INTERVAL": "0.2"})
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]

    def delivered() -> float:
        found = samples(server.get("/metrics").body.decode())
        return sum(s.value for s in found.get("keyledger_webhook_attempts_total", [])
                   if s.labels.get("outcome") == "delivered")

    with Receiver() as receiver:
        hook = server.post("/v2/webhooks", {"url": receiver.url, "event_types": ["app.created", "key.created"]},
                           token=admin)
        assert hook.status == 201, hook.body
        receiver.secret = hook.json["secret"]
        assert delivered() == 0
        assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=admin).status == 201
        assert wait_until(lambda: len(receiver.delivered()) == 2, timeout=30), receiver.requests
        # one worker delivers (it holds the scheduler lock); any worker's scrape adds up every worker's files
        assert wait_until(lambda: delivered() == 2, timeout=10, interval=0.1), delivered()
    assert all(r["verified"] for r in receiver.requests)
