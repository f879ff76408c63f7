"""A compressed deprecation campaign against a live ``keyledger serve`` (two workers, one embedded
scheduler), on the real clock, with a real SMTP server: stages seconds apart, the mails in order,
the access token refused after the sunset."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

from tests.campaign_support import SmtpServer


def test_a_compressed_campaign_mails_in_order_and_refuses_the_token_after_the_sunset(start_server):
    smtp = SmtpServer().start()
    try:
        # The first stage is due 25 s before the sunset: 50 s leaves 25 s for the set-up (a server
        # with two workers, two accounts, an app, a token), which took over 15 s at a load of 12.
        sunset = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=50)
        server = start_server(workers=2, env={
            "KEYLEDGER_SMTP_URL": smtp.url, "KEYLEDGER_LEGACY_SUNSET_AT": sunset.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "KEYLEDGER_REMINDERS": "25s,12s", "KEYLEDGER_SCHEDULER_INTERVAL": "0.5",
            "KEYLEDGER_LEGACY_LOOKBACK": "1h"})
        admin = server.create_account("admin", "admin@example.com", "Ada Admin")
        owner = server.create_account("owner", "olga@example.com", "Olga Owner")
        assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner["token"]).status == 201
        issued = server.post("/v2/apps/vision/legacy-credentials", token=admin["token"])
        assert issued.status == 201, issued
        basic = base64.b64encode(f"{issued.json['client_id']}:{issued.json['client_secret']}".encode()).decode()
        token_request = {"headers": {"Authorization": f"Basic {basic}"},
                         "json_body": {"grant_type": "client_credentials"}}
        access_token = server.post("/v2/token", **token_request).json["access_token"]
        assert server.post("/v2/verify", {"key": access_token}).json["code"] == "VALID"
        assert datetime.now(UTC) < sunset - timedelta(seconds=25), "the set-up took longer than the first stage"

        messages = smtp.wait_for(3, timeout=(sunset - datetime.now(UTC)).total_seconds() + 20)
        assert [m["X-Keyledger-Stage"] for m in messages] == ["25s", "12s", "final"]
        assert all(m["To"] == "Olga Owner <olga@example.com>" for m in messages)

        assert datetime.now(UTC) >= sunset
        assert server.post("/v2/verify", {"key": access_token}).json["code"] == "LEGACY_TOKEN_SUNSET"
        refused = server.post("/v2/token", **token_request)
        assert refused.status == 400 and refused.json["error"] == "unauthorized_client"

        # The mail reaches the SMTP server before the scheduler records its delivery: give the
        # Delivered event a moment to reach the campaign view.
        deadline = time.monotonic() + 10
        while True:
            campaign = server.get("/v2/campaign", token=admin["token"]).json
            if campaign["stages"][-1]["owners_mailed"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert campaign["sunset_executed_at"] is not None
        assert [(s["name"], s["owners_mailed"]) for s in campaign["stages"]] == [("25s", 1), ("12s", 1), ("final", 1)]
        time.sleep(1.5)  # several more runs: nothing more is sent
        assert len(smtp.mailbox.received) == 3
        log = server.log_tail(400)
        assert log.count("scheduler started") == 1 and log.count("standing by") == 1
    finally:
        smtp.stop()
