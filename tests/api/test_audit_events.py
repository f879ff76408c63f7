"""GET /v2/audit/events and its exports: filters, cursors, bad input, spreadsheet-safe CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from freezegun import freeze_time

from service.exports import safe_cell


@pytest.fixture
def trail(auditor, owner, other_owner, owner_app, read_only_key):
    """vision (owner): default key, a read-only key changed then revoked; atlas (other owner)."""
    key_id = read_only_key["id"]
    assert owner.patch(f"/v2/keys/{key_id}", json={"scopes": ["Predict"]}).status_code == 200
    assert owner.delete(f"/v2/keys/{key_id}").status_code == 204
    assert other_owner.post("/v2/apps", json={"id": "atlas", "name": "Atlas"}).status_code == 201
    return {"key_id": key_id, "default_key_id": owner_app["default_key"]["id"]}


def every_event(caller, query: str = "") -> list[dict]:
    events, cursor = [], None
    while True:
        separator = "&" if query else ""
        response = caller.get(f"/v2/audit/events?{query}{separator}limit=1000"
                              + (f"&cursor={cursor}" if cursor else ""))
        assert response.status_code == 200, response.json
        events += response.json["events"]
        cursor = response.json["next_cursor"]
        if cursor is None:
            return events


def test_each_filter_narrows_the_trail(auditor, owner, other_owner, trail):
    everything = every_event(auditor)
    assert [e["seq"] for e in everything] == sorted(e["seq"] for e in everything)

    by_app = every_event(auditor, "app_id=vision")
    assert by_app and {e["app_id"] for e in by_app} == {"vision"}
    assert by_app == [e for e in everything if e["app_id"] == "vision"]

    by_key = every_event(auditor, f"key_id={trail['key_id']}")
    assert [e["type"] for e in by_key] == ["ApiKey.Issued", "ApiKey.ScopesChanged", "ApiKey.Revoked"]
    assert every_event(auditor, f"key_id={trail['key_id'].upper()}") == by_key  # any spelling

    by_actor = every_event(auditor, f"actor=account:{other_owner.id}")
    assert by_actor and {e["app_id"] for e in by_actor} == {"atlas"}
    system = every_event(auditor, "actor=system")
    assert system and {e["actor"]["kind"] for e in system} == {"system"}
    assert {e["type"] for e in system} == {"Account.Registered"}

    revoked = every_event(auditor, "type=ApiKey.Revoked")
    assert [e["key_id"] for e in revoked] == [trail["key_id"]]

    combined = every_event(auditor, f"app_id=vision&actor=account:{owner.id}&type=ApiKey.ScopesChanged")
    assert [e["key_id"] for e in combined] == [trail["key_id"]]
    assert every_event(auditor, "app_id=nowhere") == []


def test_since_and_until_bound_the_time(auditor, owner, owner_app):
    with freeze_time("2017-06-01T10:00:00Z") as frozen:
        first = owner.post("/v2/apps/vision/keys", json={"description": "a", "scopes": ["Predict"]}).json
        frozen.tick(timedelta(seconds=0.5))
        second = owner.post("/v2/apps/vision/keys", json={"description": "b", "scopes": ["Predict"]}).json
        frozen.tick(timedelta(days=1))
        third = owner.post("/v2/apps/vision/keys", json={"description": "c", "scopes": ["Predict"]}).json

    def keys(query: str) -> list[str]:
        return [e["key_id"] for e in every_event(auditor, f"type=ApiKey.Issued&{query}")]

    assert keys("since=2017-06-01T10:00:00Z&until=2017-06-01T10:00:00.5Z") == [first["id"]]
    assert keys("since=2017-06-01T10:00:00.5Z&until=2017-06-02T00:00:00Z") == [second["id"]]
    assert keys("since=2017-06-02T00:00:00%2B02:00&until=2017-06-03T00:00:00Z") == [third["id"]]  # an offset


def test_a_cursor_is_a_position_stable_under_concurrent_writes(auditor, owner, trail):
    before = every_event(auditor)
    first_page = auditor.get("/v2/audit/events?limit=3").json
    assert first_page["events"] == before[:3] and first_page["next_cursor"]

    # Others write while the auditor reads on: the next page starts right after the last one seen.
    owner.post("/v2/apps/vision/keys", json={"description": "new", "scopes": ["Search"]})
    second_page = auditor.get(f"/v2/audit/events?limit=3&cursor={first_page['next_cursor']}").json
    assert second_page["events"] == before[3:6]

    after = every_event(auditor)
    assert after[:len(before)] == before and len(after) == len(before) + 1
    last_page = auditor.get(f"/v2/audit/events?limit=1000&cursor={second_page['next_cursor']}").json
    assert last_page["events"] == after[6:] and last_page["next_cursor"] is None


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"), ("limit=-5", "limit"),
    ("cursor=not-a-cursor", "cursor"), ("cursor=c2VxOi0x", "cursor"), ("since=yesterday", "since"),
    ("until=2017-13-01T00:00:00Z", "until"), ("actor=bob", "actor"), ("actor=account:", "actor"),
    ("type=revoked", "type"), ("type=ApiKey.Revoked%0A", "type"), ("colour=red", "colour"),
    ("app_id=" + "a" * 64, "app_id"), ("since=0001-01-01T00:00:00%2B01:00", "since"),
    ("until=9999-12-31T23:59:59-01:00", "until"),
])
def test_bad_filters_are_400_naming_the_field(auditor, query, field):
    for path in ("/v2/audit/events", "/v2/audit/events.jsonl", "/v2/audit/events.csv"):
        if path != "/v2/audit/events" and field in ("limit", "cursor"):
            continue
        response = auditor.get(f"{path}?{query}")
        assert response.status_code == 400, (path, query, response.get_data(as_text=True))
        assert response.mimetype == "application/json"
        assert response.json["error"]["code"] == "INVALID_REQUEST"
        assert field in response.json["error"]["details"], response.json


def test_limit_bounds_are_inclusive(auditor, trail):
    assert auditor.get("/v2/audit/events?limit=1").status_code == 200
    assert len(auditor.get("/v2/audit/events?limit=1").json["events"]) == 1
    assert auditor.get("/v2/audit/events?limit=1000").status_code == 200
    assert len(auditor.get("/v2/audit/events").json["events"]) <= 100


def test_exports_hold_the_same_events_as_the_pages(auditor, trail):
    events = every_event(auditor, "app_id=vision")

    jsonl = auditor.get("/v2/audit/events.jsonl?app_id=vision")
    assert jsonl.mimetype == "application/x-ndjson"
    assert "attachment" in jsonl.headers["Content-Disposition"]
    assert [json.loads(line) for line in jsonl.get_data(as_text=True).splitlines()] == events

    exported = auditor.get("/v2/audit/events.csv?app_id=vision")
    assert exported.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert [int(r["seq"]) for r in rows] == [e["seq"] for e in events]
    assert [r["hash"] for r in rows] == [e["hash"] for e in events]
    assert json.loads(rows[0]["data"]) == events[0]["data"]


def test_csv_cells_cannot_become_formulas(auditor, owner, owner_app):
    hostile = "=HYPERLINK(\"http://evil.example\",\"click\")"
    response = owner.post("/v2/apps/vision/keys", json={"description": "-2+3", "scopes": ["Predict"]},
                          headers={"User-Agent": hostile})
    assert response.status_code == 201
    exported = auditor.get("/v2/audit/events.csv?type=ApiKey.Issued").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(exported)))
    cells = [cell for row in rows for cell in row]
    assert "'" + hostile in cells
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    for dangerous in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert safe_cell(dangerous) == "'" + dangerous
    assert safe_cell("plain") == "plain" and safe_cell(7) == 7


def test_history_and_events_agree(auditor, owner, trail):
    history = owner.get(f"/v2/keys/{trail['key_id']}/history").json["events"]
    assert history == every_event(auditor, f"key_id={trail['key_id']}")
