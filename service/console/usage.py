"""The console's view of usage per key (projections.usage): a chart of a key's last 48 hours on
its page (valid answers against refusals, per UTC hour, drawn with the campaign's chart helper)
and each key's requests in the last 24 hours on its app's page."""

from __future__ import annotations

from datetime import UTC, datetime

from projections.usage import HOUR
from service.console import chart

CHART_HOURS = 48


def key_usage(system, key_id: str) -> dict:  # noqa: ANN001 - a service.composition.System
    """The key page's chart: per hour of the last 48 (the current one last), valid and refused."""
    now = system.keys_app.now().timestamp()
    end = int(now - now % HOUR) + HOUR
    periods = system.usage.report(key_id, end - CHART_HOURS * HOUR, end, HOUR)
    series = [{"day": datetime.fromtimestamp(start, UTC), "valid": valid, "refused": sum(refused.values()),
               "codes": refused} for start, valid, refused in periods]
    return {"series": series, "chart": chart.bars(series, ("valid", "refused"), "%H:00", 6),
            "valid": sum(d["valid"] for d in series), "refused": sum(d["refused"] for d in series)}


def requests_last_day(system, key_ids: list[str]) -> dict[str, int]:  # noqa: ANN001
    """Per key: its requests (valid and refused) in the last 24 hours (the current hour and the 23 before)."""
    now = system.keys_app.now().timestamp()
    return system.usage.totals(key_ids, int(now - now % HOUR) - 23 * HOUR)
