"""Rate limits and quotas of a key or an app: ``[{"limit": 20, "per": "1s"}, ...]``.

A limit is a whole number of verifications per period; the period is ``<n><unit>`` with unit
``s``, ``m``, ``h`` or ``d`` (``1s`` … ``365d``). A key or an app carries at most
``MAX_LIMITS`` of them, each period at most once. ``checked_limits`` turns what a caller sent
into the canonical list stored in events, or raises ``InvalidRequest`` naming each bad field
(``limits[1].per``). Pure: no clock, no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from service.domain.errors import InvalidRequest

MAX_LIMITS = 5
MAX_LIMIT = 1_000_000_000
MAX_PERIOD = 365 * 86_400
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_PERIOD = re.compile(r"([1-9][0-9]{0,7})([smhd])")


def period_seconds(per: str) -> int:
    """``"1m"`` → 60 (the text is assumed checked)."""
    match = _PERIOD.fullmatch(per)
    if match is None:
        raise ValueError(per)
    return int(match.group(1)) * UNITS[match.group(2)]


def _period_problem(per: Any) -> str | None:
    if not isinstance(per, str):
        return "A period such as \"1s\", \"1m\", \"1h\" or \"1d\" (a string: a whole number and a unit s, m, h or d)."
    if _PERIOD.fullmatch(per) is None:
        return (f"Not a period: use a whole number from 1 and a unit s, m, h or d, such as \"1s\", \"10m\" or "
                f"\"1d\" (got {per[:20]!r}).")
    if period_seconds(per) > MAX_PERIOD:
        return "At most 365 days."
    return None


def checked_limits(value: Any, field: str = "limits") -> list[dict]:
    """The canonical limits (``[{"limit": n, "per": "1m"}]``, shortest period first), or
    InvalidRequest naming every bad field."""
    if not isinstance(value, list):
        raise InvalidRequest(f"{field} is a list of {{\"limit\": n, \"per\": \"1m\"}} objects ([] for none).",
                             **{field: ["Must be a list (use [] for no limits)."]})
    if len(value) > MAX_LIMITS:
        raise InvalidRequest(f"At most {MAX_LIMITS} limits.", **{field: [f"At most {MAX_LIMITS} limits."]})
    problems: dict[str, list[str]] = {}
    seen: dict[int, int] = {}
    limits = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            problems[where] = ["Must be an object {\"limit\": n, \"per\": \"1m\"}."]
            continue
        for name in sorted(set(item) - {"limit", "per"}):
            problems[f"{where}.{name}"] = ["Unknown field: a limit has only \"limit\" and \"per\"."]
        limit = item.get("limit")
        if "limit" not in item:
            problems[f"{where}.limit"] = ["Required: how many verifications per period."]
        elif not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            problems[f"{where}.limit"] = [f"A whole number from 1 to {MAX_LIMIT}."]
        per = item.get("per")
        if "per" not in item:
            problems[f"{where}.per"] = ["Required: the period, such as \"1s\", \"1m\", \"1h\" or \"1d\"."]
        elif (problem := _period_problem(per)) is not None:
            problems[f"{where}.per"] = [problem]
        elif (seconds := period_seconds(per)) in seen:
            problems[f"{where}.per"] = [f"The same period as {field}[{seen[seconds]}]: give each period once."]
        else:
            seen[seconds] = i
        if f"{where}.limit" not in problems and f"{where}.per" not in problems and not any(
                k.startswith(where + ".") for k in problems):
            limits.append({"limit": limit, "per": per})
    if problems:
        names = ", ".join(sorted(problems))
        raise InvalidRequest(f"Invalid limits: check {names}.", **problems)
    return sorted(limits, key=lambda item: period_seconds(item["per"]))
