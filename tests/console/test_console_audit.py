"""The security team's pages: the audit trail's filters and paging, integrity, who could act then."""

from __future__ import annotations

import re

from tests.console.conftest import problems

ROW = re.compile(r"<tr>\s*<td>(\d+)</td>")


def test_the_trail_pages_with_the_api_s_cursor_and_keeps_the_filters(browser_of, auditor, read_only_key, owner):
    owner.delete(f"/v2/keys/{read_only_key['id']}")
    browser = browser_of(auditor)
    first = browser.get("/console/audit?app_id=vision&limit=2").get_data(as_text=True)
    seqs = [int(s) for s in ROW.findall(first)]
    assert len(seqs) == 2
    following = re.search(r'href="([^"]+)" rel="next"', first)[1].replace("&amp;", "&")
    assert "app_id=vision" in following and "cursor=" in following
    second = browser.get(following).get_data(as_text=True)
    more = [int(s) for s in ROW.findall(second)]
    assert more and min(more) > max(seqs)
    assert "First page" in second
    api = owner.get("/v2/audit/events?app_id=vision").json["events"]
    everything = seqs + more
    while 'rel="next"' in second:
        following = re.search(r'href="([^"]+)" rel="next"', second)[1].replace("&amp;", "&")
        second = browser.get(following).get_data(as_text=True)
        everything += [int(s) for s in ROW.findall(second)]
    assert everything == [e["seq"] for e in api]


def test_a_key_s_events_are_found_by_its_id(browser_of, auditor, read_only_key, owner):
    owner.delete(f"/v2/keys/{read_only_key['id']}")
    html = browser_of(auditor).get(f"/console/audit?key_id={read_only_key['id']}").get_data(as_text=True)
    assert re.findall(r"<code>(ApiKey\.\w+)</code>", html) == ["ApiKey.Issued", "ApiKey.Revoked"]


def test_an_owner_reads_only_their_own_apps_events(browser_of, owner, other_owner, read_only_key):
    html = browser_of(other_owner).get("/console/audit").get_data(as_text=True)
    assert "vision" not in html and read_only_key["id"][:8] not in html


def test_integrity_shows_the_last_signed_checkpoint(browser_of, auditor, owner_app, system):
    checkpoint = system.sign_checkpoint()
    html = browser_of(auditor).get("/console/audit/integrity").get_data(as_text=True)
    assert "Intact." in html and checkpoint["hash"] in html and checkpoint["signature"] in html


def test_who_could_do_a_scope_then(browser_of, auditor, read_only_key):
    html = browser_of(auditor).get("/console/audit/access?app_id=vision&scope=Predict").get_data(as_text=True)
    assert read_only_key["id"] in html and read_only_key["display"] in html
    none = browser_of(auditor).get("/console/audit/access?app_id=vision&scope=Models:Add&at=2001-01-01T00:00")
    assert "No credential could do that then." in none.get_data(as_text=True)


def test_a_bad_question_is_answered_next_to_its_field(browser_of, auditor, owner_app):
    browser = browser_of(auditor)
    unknown_scope = browser.get("/console/audit/access?app_id=vision&scope=Fly")
    assert unknown_scope.status_code == 400 and "scope" in problems(unknown_scope.get_data(as_text=True))
    unknown_app = browser.get("/console/audit/access?app_id=nope&scope=Predict")
    assert unknown_app.status_code == 400 and "No app" in problems(unknown_app.get_data(as_text=True))["app_id"]
    bad_time = browser.get("/console/audit/access?app_id=vision&scope=Predict&at=soon")
    assert "at" in problems(bad_time.get_data(as_text=True))
