"""The audit trail's export formats, shared by the HTTP exports and ``keyledger audit export``.

JSON Lines: one audit event (the API's shape) per line. CSV: one row per event, ``data`` and
nothing else as JSON; every text cell that a spreadsheet would read as a formula (starting
with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is prefixed with ``'``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator

CSV_COLUMNS = ("seq", "id", "type", "occurred_at", "actor_kind", "actor_id", "app_id", "key_id", "data",
               "request_id", "request_ip", "request_user_agent", "hash", "prev_hash")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


def safe_cell(value: object) -> object:
    """A cell a spreadsheet shows as text, never evaluates."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def csv_row(event: dict) -> list:
    request = event.get("request") or {}
    cells = [event["seq"], event["id"], event["type"], event["occurred_at"], event["actor"]["kind"],
             event["actor"]["id"], event["app_id"], event["key_id"],
             json.dumps(event["data"], sort_keys=True, ensure_ascii=False),
             request.get("id"), request.get("ip"), request.get("user_agent"), event["hash"],
             event["prev_hash"]]
    return [safe_cell("" if cell is None else cell) for cell in cells]


def jsonl_lines(events: Iterable[dict]) -> Iterator[str]:
    chunk: list[str] = []
    size = 0
    for event in events:
        line = json.dumps(event, ensure_ascii=False) + "\n"
        chunk.append(line)
        size += len(line)
        if size > 64 * 1024:
            yield "".join(chunk)
            chunk, size = [], 0
    yield "".join(chunk)


def csv_lines(events: Iterable[dict]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for event in events:
        writer.writerow(csv_row(event))
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def lines(events: Iterable[dict], fmt: str) -> Iterator[str]:
    return csv_lines(events) if fmt == "csv" else jsonl_lines(events)
