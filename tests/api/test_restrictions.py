"""Client restrictions of a key (browser, server, android, ios): set, changed, judged, audited."""

from __future__ import annotations

import pytest

CERT = ":".join(["AB"] * 32)


def new_key(owner, restrictions, scopes=("Predict",)):
    response = owner.post("/v2/apps/vision/keys", json={"description": "restricted", "scopes": list(scopes),
                                                         "restrictions": restrictions})
    assert response.status_code == 201, response.json
    return response.json


def verify(client, key, **facts):
    response = client.post("/v2/verify", json={"key": key, "scope": "Predict", **facts})
    assert response.status_code == 200, response.json
    return response.json


def check(client, key, headers=None, environ=None):
    return client.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {key}", **(headers or {})},
                      environ_base=environ or {})


# -- setting them ----------------------------------------------------------------------------

def test_a_key_has_no_restriction_by_default(owner, read_only_key):
    assert read_only_key["restrictions"] is None
    assert owner.get(f"/v2/keys/{read_only_key['id']}").json["restrictions"] is None


def test_restrictions_are_set_at_creation_in_canonical_form(owner, owner_app):
    key = new_key(owner, {"android": [{"package": "com.example.app", "sha256_cert": "ab" * 32}]})
    assert key["restrictions"] == {"android": [{"package": "com.example.app", "sha256_cert": CERT}]}
    listed = owner.get("/v2/apps/vision/keys").json["keys"]
    assert [k["restrictions"] for k in listed if k["id"] == key["id"]] == [key["restrictions"]]
    server = new_key(owner, {"server": ["203.0.113.7/32", "2001:db8::/32", "203.0.113.7"]})
    assert server["restrictions"] == {"server": ["203.0.113.7", "2001:db8::/32"]}


def test_patch_changes_and_lifts_a_restriction_guarded_by_if_match(owner, read_only_key):
    url = f"/v2/keys/{read_only_key['id']}"
    version = owner.get(url).json["version"]
    changed = owner.patch(url, json={"restrictions": {"ios": ["com.example.app"]}},
                          headers={"If-Match": str(version)})
    assert changed.status_code == 200 and changed.json["restrictions"] == {"ios": ["com.example.app"]}
    stale = owner.patch(url, json={"restrictions": None}, headers={"If-Match": str(version)})
    assert stale.status_code == 412
    lifted = owner.patch(url, json={"restrictions": None})
    assert lifted.status_code == 200 and lifted.json["restrictions"] is None


# -- judging them ------------------------------------------------------------------------------

def test_browser_key_answers_from_its_origin_only(client, owner, owner_app):
    key = new_key(owner, {"browser": ["https://app.example.com", "https://*.example.org/*",
                                      "http://localhost:*"]})["key"]
    for origin in ("https://app.example.com", "https://a.b.example.org", "http://localhost:5173",
                   "https://app.example.com:443"):
        assert verify(client, key, origin=origin)["code"] == "VALID", origin
    for origin in ("https://evil.com", "http://app.example.com", "https://example.org",
                   "https://app.example.com.evil.com", "https://app.example.com:8443", "null"):
        result = verify(client, key, origin=origin)
        assert result == {**result, "valid": False, "code": "ORIGIN_NOT_ALLOWED"}, origin
    assert verify(client, key)["code"] == "ORIGIN_NOT_ALLOWED"  # no fact at all
    assert verify(client, key, referrer="https://x.example.org/page?q=1")["code"] == "VALID"
    # Origin wins over Referer when both are sent
    assert verify(client, key, origin="https://evil.com", referrer="https://app.example.com/")["code"] \
        == "ORIGIN_NOT_ALLOWED"


def test_browser_pattern_with_a_path_judges_the_referrer(client, owner, owner_app):
    key = new_key(owner, {"browser": ["https://example.com/app/*"]})["key"]
    assert verify(client, key, referrer="https://example.com/app/page")["code"] == "VALID"
    assert verify(client, key, referrer="https://example.com/other")["code"] == "ORIGIN_NOT_ALLOWED"
    assert verify(client, key, origin="https://example.com")["code"] == "VALID"  # an Origin has no path


def test_server_key_answers_from_its_networks_only(client, owner, owner_app):
    key = new_key(owner, {"server": ["203.0.113.0/24", "2001:db8::/32"]})["key"]
    for ip in ("203.0.113.9", "2001:db8::1", "::ffff:203.0.113.9"):
        assert verify(client, key, ip=ip)["code"] == "VALID", ip
    for ip in ("198.51.100.1", "2001:db9::1", "not-an-ip", "203.0.113"):
        assert verify(client, key, ip=ip)["code"] == "IP_NOT_ALLOWED", ip
    assert verify(client, key)["code"] == "IP_NOT_ALLOWED"


def test_mobile_keys_answer_to_their_apps_only(client, owner, owner_app):
    android = new_key(owner, {"android": [{"package": "com.example.app", "sha256_cert": CERT}]})["key"]
    assert verify(client, android, android_package="com.example.app", android_cert="ab" * 32)["code"] == "VALID"
    assert verify(client, android, android_package="com.example.app",
                  android_cert="CD" * 32)["code"] == "APP_NOT_ALLOWED"
    assert verify(client, android, android_package="com.evil.app", android_cert=CERT)["code"] == "APP_NOT_ALLOWED"
    ios = new_key(owner, {"ios": ["com.example.App"]})["key"]
    assert verify(client, ios, ios_bundle_id="com.example.app")["code"] == "VALID"
    assert verify(client, ios, ios_bundle_id="com.evil.app")["code"] == "APP_NOT_ALLOWED"
    assert verify(client, ios)["code"] == "APP_NOT_ALLOWED"


def test_a_restriction_does_not_hide_other_refusals(client, owner, owner_app):
    key = new_key(owner, {"browser": ["https://app.example.com"]})
    refused = client.post("/v2/verify", json={"key": key["key"], "scope": "Models:Add",
                                              "origin": "https://evil.com"}).json
    assert refused["code"] == "INSUFFICIENT_SCOPE"
    assert owner.delete(f"/v2/keys/{key['id']}").status_code == 204
    assert verify(client, key["key"], origin="https://app.example.com")["code"] == "REVOKED"


def test_a_restriction_change_applies_before_patch_returns(client, owner, read_only_key):
    assert verify(client, read_only_key["key"])["code"] == "VALID"
    owner.patch(f"/v2/keys/{read_only_key['id']}", json={"restrictions": {"server": ["10.0.0.0/8"]}})
    assert verify(client, read_only_key["key"])["code"] == "IP_NOT_ALLOWED"
    assert verify(client, read_only_key["key"], ip="10.1.2.3")["code"] == "VALID"
    owner.patch(f"/v2/keys/{read_only_key['id']}", json={"scopes": ["Predict", "Search"]})  # keeps it
    assert verify(client, read_only_key["key"])["code"] == "IP_NOT_ALLOWED"
    owner.patch(f"/v2/keys/{read_only_key['id']}", json={"restrictions": None})
    assert verify(client, read_only_key["key"])["code"] == "VALID"


def test_a_rolled_key_keeps_its_restriction_on_both_secrets(client, owner, owner_app):
    key = new_key(owner, {"ios": ["com.example.app"]})
    rolled = owner.post(f"/v2/keys/{key['id']}/roll", json={"grace_seconds": 60}).json
    for secret in (key["key"], rolled["key"]):
        assert verify(client, secret)["code"] == "APP_NOT_ALLOWED"
        assert verify(client, secret, ios_bundle_id="com.example.app")["code"] == "VALID"


def test_verify_refuses_facts_of_the_wrong_type(client, read_only_key):
    response = client.post("/v2/verify", json={"key": read_only_key["key"], "origin": 7, "ip": "x" * 65})
    assert response.status_code == 400
    assert set(response.json["error"]["details"]) == {"origin", "ip"}


# -- forward-auth -----------------------------------------------------------------------------------

def test_forward_auth_refuses_another_origin_with_403_and_the_code(client, owner, owner_app):
    key = new_key(owner, {"browser": ["https://app.example.com"]})["key"]
    assert check(client, key, {"Origin": "https://app.example.com"}).status_code == 200
    refused = check(client, key, {"Origin": "https://evil.com"})
    assert refused.status_code == 403
    assert refused.headers["X-Keyledger-Code"] == "ORIGIN_NOT_ALLOWED"
    assert refused.json["error"]["code"] == "ORIGIN_NOT_ALLOWED"
    assert "allowed" in refused.json["error"]["message"]
    assert check(client, key, {"Referer": "https://app.example.com/page"}).status_code == 200


def test_forward_auth_reads_the_client_address_through_trusted_proxies_only(client, owner, owner_app):
    key = new_key(owner, {"server": ["203.0.113.0/24"]})["key"]
    # The test client's peer is 127.0.0.1: a trusted proxy by default.
    assert check(client, key, {"X-Forwarded-For": "203.0.113.5"}).status_code == 200
    # The right-most address that is not a trusted proxy: what the client wrote to its left proves nothing.
    assert check(client, key, {"X-Forwarded-For": "203.0.113.5, 198.51.100.7"}).status_code == 403
    assert check(client, key, {"X-Forwarded-For": "198.51.100.7, 203.0.113.5, 127.0.0.1"}).status_code == 200
    assert check(client, key, {"Forwarded": 'for="203.0.113.5:4711";proto=https'}).status_code == 200
    # A peer that is not a trusted proxy: its own address counts, whatever it says it forwards.
    forged = check(client, key, {"X-Forwarded-For": "203.0.113.5"}, environ={"REMOTE_ADDR": "198.51.100.7"})
    assert forged.status_code == 403 and forged.headers["X-Keyledger-Code"] == "IP_NOT_ALLOWED"
    assert check(client, key, environ={"REMOTE_ADDR": "203.0.113.9"}).status_code == 200


def test_forward_auth_passes_the_mobile_headers(client, owner, owner_app):
    key = new_key(owner, {"android": [{"package": "com.example.app", "sha256_cert": CERT}]})["key"]
    assert check(client, key, {"X-Android-Package": "com.example.app", "X-Android-Cert": CERT}).status_code == 200
    refused = check(client, key, {"X-Android-Package": "com.example.app"})
    assert refused.status_code == 403 and refused.json["error"]["code"] == "APP_NOT_ALLOWED"
    ios = new_key(owner, {"ios": ["com.example.app"]})["key"]
    assert check(client, ios, {"X-Ios-Bundle-Identifier": "com.example.app"}).status_code == 200


# -- bad input ---------------------------------------------------------------------------------------

MALFORMED = [
    # (restrictions, the field named, a fragment of the bad item in the message)
    ("everything", "restrictions", None),
    ([], "restrictions", None),
    ({}, "restrictions", None),
    ({"browser": ["https://a.com"], "server": ["10.0.0.0/8"]}, "restrictions", None),
    ({"desktop": ["x"]}, "restrictions", "desktop"),
    ({"browser": []}, "restrictions.browser", None),
    ({"browser": "https://a.com"}, "restrictions.browser", None),
    ({"browser": ["*"]}, "restrictions.browser", "*"),
    ({"browser": ["https://*"]}, "restrictions.browser", "https://*"),
    ({"browser": ["*://*"]}, "restrictions.browser", "*://*"),
    ({"browser": ["https://*.com"]}, "restrictions.browser", "https://*.com"),
    ({"browser": ["https://*.co.uk/*"]}, "restrictions.browser", "https://*.co.uk/*"),
    ({"browser": ["http://*:*"]}, "restrictions.browser", "http://*:*"),
    ({"browser": ["app.example.com"]}, "restrictions.browser", "app.example.com"),
    ({"browser": ["ftp://example.com"]}, "restrictions.browser", "ftp://example.com"),
    ({"browser": ["https://app.*.example.com"]}, "restrictions.browser", "app.*.example.com"),
    ({"browser": ["https://a*.example.com"]}, "restrictions.browser", "a*.example.com"),
    ({"browser": ["https://example.com/*/x"]}, "restrictions.browser", "/*/x"),
    ({"browser": ["https://example.com:99999"]}, "restrictions.browser", "99999"),
    ({"browser": ["https://example.com:0"]}, "restrictions.browser", ":0"),
    ({"browser": ["https://user@example.com"]}, "restrictions.browser", "user@"),
    ({"browser": ["https://example.com/?q=1"]}, "restrictions.browser", "?q=1"),
    ({"browser": ["https://exa mple.com"]}, "restrictions.browser", "exa mple"),
    ({"browser": ["https://-bad-.com"]}, "restrictions.browser", "-bad-"),
    ({"browser": ["https://[zz::1]"]}, "restrictions.browser", "zz::1"),
    ({"browser": ["https://bücher.de"]}, "restrictions.browser", "bücher"),
    ({"browser": [42]}, "restrictions.browser", "42"),
    ({"browser": ["https://" + "a" * 300 + ".com"]}, "restrictions.browser", "aaaa"),
    ({"browser": ["https://example.com"] * 101}, "restrictions.browser", None),
    ({"server": ["10.0.0.1/24"]}, "restrictions.server", "10.0.0.1/24"),
    ({"server": ["10.0.0.0/33"]}, "restrictions.server", "10.0.0.0/33"),
    ({"server": ["256.1.1.1"]}, "restrictions.server", "256.1.1.1"),
    ({"server": ["0.0.0.0/0"]}, "restrictions.server", "0.0.0.0/0"),
    ({"server": ["::/0"]}, "restrictions.server", "::/0"),
    ({"server": ["example.com"]}, "restrictions.server", "example.com"),
    ({"server": ["2001:db8::g"]}, "restrictions.server", "2001:db8::g"),
    ({"server": [None]}, "restrictions.server", "None"),
    ({"android": ["com.example.app"]}, "restrictions.android", "com.example.app"),
    ({"android": [{"package": "com.example.app"}]}, "restrictions.android", "package"),
    ({"android": [{"package": "example", "sha256_cert": CERT}]}, "restrictions.android", "example"),
    ({"android": [{"package": "1com.example", "sha256_cert": CERT}]}, "restrictions.android", "1com.example"),
    ({"android": [{"package": "com.example.app", "sha256_cert": "AB" * 20}]}, "restrictions.android", "ABAB"),
    ({"android": [{"package": "com.example.app", "sha256_cert": "ZZ" * 32}]}, "restrictions.android", "ZZZZ"),
    ({"android": [{"package": "com.example.app", "sha256_cert": CERT, "name": "x"}]}, "restrictions.android", None),
    ({"android": [{"package": "com.example.app", "sha256_cert": "A:B" + "AB" * 31}]}, "restrictions.android", "A:B"),
    ({"ios": ["app"]}, "restrictions.ios", "app"),
    ({"ios": ["com.example.app!"]}, "restrictions.ios", "com.example.app!"),
    ({"ios": ["com..example"]}, "restrictions.ios", "com..example"),
    ({"ios": [""]}, "restrictions.ios", None),
]


@pytest.mark.parametrize("restrictions,field,item", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_restriction_is_refused_naming_the_field_and_the_item(owner, owner_app, restrictions, field,
                                                                       item):
    for response in (
        owner.post("/v2/apps/vision/keys", json={"description": "x", "scopes": ["Predict"],
                                                 "restrictions": restrictions}),
        owner.patch(f"/v2/keys/{owner_app['default_key']['id']}", json={"restrictions": restrictions}),
    ):
        assert response.status_code == 400, response.json
        error = response.json["error"]
        assert error["code"] == "INVALID_REQUEST"
        assert field in error["details"], error
        if item is not None:
            assert item in error["message"] and item in " ".join(error["details"][field]), error
    assert len(owner.get("/v2/apps/vision/keys").json["keys"]) == 1  # nothing was created


def test_at_least_thirty_malformed_restrictions_are_tried():
    assert len(MALFORMED) >= 30


def test_a_pattern_for_every_site_is_refused_with_the_reason(owner, owner_app):
    response = owner.post("/v2/apps/vision/keys", json={"description": "x", "scopes": ["Predict"],
                                                        "restrictions": {"browser": ["https://*"]}})
    assert response.status_code == 400
    assert "would match every site" in response.json["error"]["message"]
    assert "protect nothing" in response.json["error"]["message"]


# -- the record: history, as_of, the access question, the exports ----------------------------------

@pytest.fixture
def restricted_timeline(owner, auditor):
    """10:00 app "atlas" (default key: no restriction); 10:10 a browser key for *.example.com;
    11:00 changed to https://app.example.com only; 12:00 changed to a server key for 10.0.0.0/8."""
    from datetime import timedelta

    from freezegun import freeze_time

    with freeze_time("2017-06-01T10:00:00Z") as frozen:
        app = owner.post("/v2/apps", json={"id": "atlas", "name": "Atlas"}).json
        frozen.tick(timedelta(minutes=10))
        key = owner.post("/v2/apps/atlas/keys", json={"description": "web", "scopes": ["Predict"],
                                                      "restrictions": {"browser": ["https://*.example.com"]}}).json
        frozen.tick(timedelta(minutes=50))
        owner.patch(f"/v2/keys/{key['id']}", json={"restrictions": {"browser": ["https://app.example.com"]}})
        frozen.tick(timedelta(hours=1))
        owner.patch(f"/v2/keys/{key['id']}", json={"restrictions": {"server": ["10.0.0.0/8"]}})
        frozen.tick(timedelta(hours=1))
        yield {"key": key, "default_key": app["default_key"]}


def test_every_restriction_change_is_in_the_key_s_history(owner, restricted_timeline):
    key_id = restricted_timeline["key"]["id"]
    events = owner.get(f"/v2/keys/{key_id}/history").json["events"]
    restricted = [e for e in events if e["type"] == "ApiKey.Restricted"]
    assert [e["data"]["restrictions"] for e in restricted] == [
        {"browser": ["https://*.example.com"]}, {"browser": ["https://app.example.com"]}, {"server": ["10.0.0.0/8"]}]
    assert [e["data"]["previous_restrictions"] for e in restricted] == [
        None, {"browser": ["https://*.example.com"]}, {"browser": ["https://app.example.com"]}]
    assert all("digests" not in e["data"] for e in restricted)
    assert restricted[0]["actor"]["kind"] == "account"


@pytest.mark.parametrize("at,expected", [
    ("2017-06-01T10:30:00Z", {"browser": ["https://*.example.com"]}),
    ("2017-06-01T11:30:00Z", {"browser": ["https://app.example.com"]}),
    ("2017-06-01T12:30:00Z", {"server": ["10.0.0.0/8"]}),
])
def test_as_of_gives_the_restriction_of_that_moment(owner, restricted_timeline, at, expected):
    key = owner.get(f"/v2/keys/{restricted_timeline['key']['id']}?as_of={at}").json
    assert key["restrictions"] == expected


@pytest.mark.parametrize("at,origin,ip,could", [
    # "which keys could do Predict on atlas from origin O at T"
    ("2017-06-01T10:30:00Z", "https://shop.example.com", None, True),
    ("2017-06-01T11:30:00Z", "https://shop.example.com", None, False),
    ("2017-06-01T11:30:00Z", "https://app.example.com", None, True),
    ("2017-06-01T11:30:00Z", None, None, True),  # no fact asked about: every key, with its restriction
    ("2017-06-01T12:30:00Z", "https://app.example.com", None, True),  # judged on its address, not asked
    ("2017-06-01T12:30:00Z", None, "10.1.2.3", True),
    ("2017-06-01T12:30:00Z", "https://app.example.com", "192.0.2.1", False),
])
def test_access_answers_which_keys_could_act_from_an_origin_or_address(auditor, restricted_timeline, at, origin,
                                                                       ip, could):
    from urllib.parse import urlencode

    query = {"app_id": "atlas", "scope": "Predict", "at": at, **({"origin": origin} if origin else {}),
             **({"ip": ip} if ip else {})}
    response = auditor.get("/v2/audit/access?" + urlencode(query))
    assert response.status_code == 200, response.json
    found = {c["key_id"]: c["restrictions"] for c in response.json["credentials"]}
    assert found[restricted_timeline["default_key"]["id"]] is None  # unrestricted: from anywhere
    assert (restricted_timeline["key"]["id"] in found) is could
    if origin:
        assert response.json["origin"] == origin


def test_access_refuses_a_malformed_address(auditor, restricted_timeline):
    response = auditor.get("/v2/audit/access?app_id=atlas&scope=Predict&ip=10.0.0.300")
    assert response.status_code == 400 and "ip" in response.json["error"]["details"]


def test_the_audit_export_holds_every_restriction_change(auditor, restricted_timeline):
    import csv
    import io
    import json

    lines = auditor.get("/v2/audit/events.jsonl?type=ApiKey.Restricted").get_data(as_text=True).splitlines()
    assert [json.loads(line)["data"]["restrictions"] for line in lines] == [
        {"browser": ["https://*.example.com"]}, {"browser": ["https://app.example.com"]}, {"server": ["10.0.0.0/8"]}]
    rows = list(csv.DictReader(io.StringIO(
        auditor.get("/v2/audit/events.csv?type=ApiKey.Restricted").get_data(as_text=True))))
    assert len(rows) == 3 and "10.0.0.0/8" in rows[2]["data"]
