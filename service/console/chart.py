"""The campaign's chart: apps on legacy tokens against apps on API keys, per day, drawn as SVG
on the server.

The numbers come from existing queries only (no SQL of the console's own):

* legacy tokens — the apps with a ``LegacyUseWindow.LegacyTokenUsed`` event that day in the
  audit trail (exact: the event is written on the first use in each window);
* API keys — among the apps with legacy credentials (the campaign's apps), those whose API keys
  were used that day (``LastUsed.apps_per_day``: the days each key was used, written with the
  last-used times, not as events).
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
    legacy: dict[date, set[str]] = {first + timedelta(days=n): set() for n in range(days)}
    api_keys: dict[date, int] = dict.fromkeys(legacy, 0)
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    for event in system.audit.stream(AuditFilter(type=LEGACY_TYPE, since_us=microseconds(since))):
        day = _day(event["occurred_at"])
        if day in legacy and event["app_id"]:
            legacy[day].add(event["app_id"])
    campaign_apps = {app["app_id"] for app in system.legacy_usage.apps()}
    for day, apps in system.last_used.apps_per_day(first).items():
        if day in api_keys:
            api_keys[day] = len(apps & campaign_apps)
    return [{"day": day, "legacy": len(apps), "api_keys": api_keys[day]} for day, apps in legacy.items()]


def _day(occurred_at: str) -> date:
    return datetime.fromisoformat(occurred_at.replace("Z", "+00:00")).astimezone(UTC).date()


def bars(series: list[dict], kinds: tuple[str, str] = ("legacy", "api_keys"), label_format: str = "%m-%d",
         label_every: int = 5) -> dict:
    """The geometry of a grouped bar chart: two bars a period (``kinds``: the series' two numbers;
    ``day``: the period's date or start, labelled with ``label_format`` every ``label_every``
    periods), a y axis with three ticks."""
    top = max([1, *(max(d[kinds[0]], d[kinds[1]]) for d in series)])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(series))
    bar_w = max(1.0, slot * 0.38)
    drawn, labels = [], []
    for n, d in enumerate(series):
        x = LEFT + n * slot + slot * 0.1
        for offset, kind in ((0.0, kinds[0]), (bar_w, kinds[1])):
            h = plot_h * d[kind] / top
            drawn.append({"kind": kind, "x": round(x + offset, 1), "y": round(TOP + plot_h - h, 1),
                          "w": round(bar_w, 1), "h": round(h, 1), "value": d[kind], "day": d["day"]})
        if n % label_every == 0 or n == len(series) - 1:
            labels.append({"x": round(LEFT + n * slot + slot / 2, 1), "text": d["day"].strftime(label_format)})
    ticks = [{"y": round(TOP + plot_h - plot_h * v / top, 1), "value": v} for v in sorted({0, top // 2, top})]
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": TOP + plot_h, "bars": drawn, "labels": labels, "ticks": ticks}
