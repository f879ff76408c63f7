"""The console's part of leak reports: which keys of an app were reported leaked (from the audit
trail's ``ApiKey.Leaked`` events), for the app's banner and the keys' badges."""

from __future__ import annotations

from typing import Any

from projections.audit import AuditFilter

LEAKED = "ApiKey.Leaked"
BANNER_MAX = 20  # reports shown on the app's banner (the latest)


def app_leaks(system: Any, app_id: str) -> list[dict]:
    """The latest leak reports of the app's keys: ``{"key_id", "url", "source", "action", "at"}``."""
    events = system.audit.page(AuditFilter(app_id=app_id, type=LEAKED), limit=1000)
    reports = [{"key_id": e["key_id"], "url": e["data"].get("url"), "source": e["data"].get("source"),
                "action": e["data"].get("action"), "at": e["occurred_at"]} for e in events]
    return reports[-BANNER_MAX:][::-1]
