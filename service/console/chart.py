"""The campaign's chart: legacy-token use against API-key use per day, drawn as SVG on the server.

The numbers come from existing queries only:

* legacy tokens — the ``LegacyUseWindow.LegacyTokenUsed`` events of the audit trail, per day
  (one per client per use window, so a busy client counts at most once a window);
* API keys — the keys whose latest use (``last_used``) fell on that day: no event is recorded
  per verification, so an earlier day's use of a key that was used again later is not counted.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from projections.audit import AuditFilter, microseconds
from service.composition import System

LEGACY_TYPE = "LegacyUseWindow.LegacyTokenUsed"
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 16, 40


def daily_use(system: System, start: datetime, *, days: int) -> list[dict]:
    first = start.astimezone(UTC).date()
    counts = {first + timedelta(days=n): {"legacy": 0, "api_keys": 0} for n in range(days)}
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    for event in system.audit.stream(AuditFilter(type=LEGACY_TYPE, since_us=microseconds(since))):
        day = _day(event["occurred_at"])
        if day in counts:
            counts[day]["legacy"] += 1
    now = system.keys_app.now()
    for app in system.directory.apps():
        ids = [key["id"] for key in system.directory.keys(app["id"], now)]
        for used in system.last_used.of(ids).values():
            day = used.astimezone(UTC).date()
            if day in counts:
                counts[day]["api_keys"] += 1
    return [{"day": day, **counted} for day, counted in counts.items()]


def _day(occurred_at: str) -> date:
    return datetime.fromisoformat(occurred_at.replace("Z", "+00:00")).astimezone(UTC).date()


def bars(series: list[dict]) -> dict:
    """The geometry of a grouped bar chart: two bars a day, a y axis with three ticks."""
    top = max([1, *(max(d["legacy"], d["api_keys"]) for d in series)])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(series))
    bar_w = max(1.0, slot * 0.38)
    drawn, labels = [], []
    for n, d in enumerate(series):
        x = LEFT + n * slot + slot * 0.1
        for offset, kind in ((0.0, "legacy"), (bar_w, "api_keys")):
            h = plot_h * d[kind] / top
            drawn.append({"kind": kind, "x": round(x + offset, 1), "y": round(TOP + plot_h - h, 1),
                          "w": round(bar_w, 1), "h": round(h, 1), "value": d[kind], "day": d["day"]})
        if n % 5 == 0 or n == len(series) - 1:
            labels.append({"x": round(LEFT + n * slot + slot / 2, 1), "text": d["day"].strftime("%m-%d")})
    ticks = [{"y": round(TOP + plot_h - plot_h * v / top, 1), "value": v} for v in sorted({0, top // 2, top})]
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": TOP + plot_h, "bars": drawn, "labels": labels, "ticks": ticks,
            "legacy_total": sum(d["legacy"] for d in series), "api_total": sum(d["api_keys"] for d in series)}
