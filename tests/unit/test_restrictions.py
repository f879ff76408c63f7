"""Client restrictions as values: parsed to a canonical form, compiled once, judged from facts."""

from __future__ import annotations

import pytest

from service.api.client_facts import TrustedProxies, request_facts
from service.domain.errors import InvalidRequest
from service.domain.restrictions import (
    APP_NOT_ALLOWED,
    IP_NOT_ALLOWED,
    ORIGIN_NOT_ALLOWED,
    RequestFacts,
    address_number,
    compile_restriction,
    judged_by,
    parse_restrictions,
)


def judge(restrictions: dict, **facts) -> str | None:
    return compile_restriction(parse_restrictions(restrictions)).refusal(RequestFacts(**facts))


@pytest.mark.parametrize("pattern,origin,allowed", [
    ("https://app.example.com", "https://app.example.com", True),
    ("https://app.example.com", "https://APP.Example.com", True),
    ("https://app.example.com", "https://app.example.com:443", True),
    ("https://app.example.com:8443", "https://app.example.com:8443", True),
    ("https://app.example.com:8443", "https://app.example.com", False),
    ("https://app.example.com", "http://app.example.com", False),
    ("https://app.example.com", "https://app.example.com.evil.net", False),
    ("https://app.example.com", "https://evilapp.example.com", False),
    ("https://*.example.com", "https://a.example.com", True),
    ("https://*.example.com", "https://a.b.example.com", True),
    ("https://*.example.com", "https://example.com", False),
    ("https://*.example.com", "https://aexample.com", False),
    ("https://*.example.com", "https://a.example.com.evil.net", False),
    ("http://localhost:*", "http://localhost:5173", True),
    ("http://localhost:*", "http://localhost", True),
    ("http://localhost:*", "http://localhost.evil.net:80", False),
    ("http://[::1]:8080", "http://[::1]:8080", True),
    ("http://127.0.0.1:*", "http://127.0.0.1:3000", True),
])
def test_a_browser_pattern_matches_origins_by_scheme_host_and_port(pattern, origin, allowed):
    assert (judge({"browser": [pattern]}, origin=origin) is None) is allowed


@pytest.mark.parametrize("pattern,referrer,allowed", [
    ("https://example.com/app/*", "https://example.com/app/page?x=1", True),
    ("https://example.com/app/*", "https://example.com/application", False),
    ("https://example.com/app", "https://example.com/app", True),
    ("https://example.com/app", "https://example.com/app?x=1", True),
    ("https://example.com/app", "https://example.com/app/x", False),
    ("https://example.com", "https://example.com/any/page", True),
    ("https://example.com", "https://example.com@evil.net/", False),
])
def test_a_browser_pattern_s_path_is_judged_against_the_referrer(pattern, referrer, allowed):
    assert (judge({"browser": [pattern]}, referrer=referrer) is None) is allowed


def test_a_browser_key_without_origin_or_referrer_is_refused():
    assert judge({"browser": ["https://example.com"]}) == ORIGIN_NOT_ALLOWED
    assert judge({"browser": ["https://example.com"]}, origin="null") == ORIGIN_NOT_ALLOWED


def test_server_addresses_match_by_network():
    restriction = {"server": ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]}
    assert judge(restriction, ip="192.0.2.255") is None
    assert judge(restriction, ip="198.51.100.7") is None
    assert judge(restriction, ip="198.51.100.8") == IP_NOT_ALLOWED
    assert judge(restriction, ip="2001:db8:ffff::1") is None
    assert judge(restriction, ip="::ffff:192.0.2.1") is None  # IPv4-mapped
    assert judge(restriction, ip="fe80::1%eth0") == IP_NOT_ALLOWED
    assert judge(restriction, ip="192.0.2") == IP_NOT_ALLOWED  # inet_aton would take it; inet_pton does not
    assert judge(restriction) == IP_NOT_ALLOWED


def test_address_numbers():
    assert address_number("10.0.0.1") == (4, 0x0A000001)
    assert address_number("::ffff:10.0.0.1") == (4, 0x0A000001)
    assert address_number("::1") == (6, 1)
    assert address_number("10.0.0.256") is None and address_number("") is None


def test_mobile_apps_match_package_and_fingerprint_or_bundle():
    cert = "ab" * 32
    android = {"android": [{"package": "com.example.app", "sha256_cert": cert}]}
    assert parse_restrictions(android)["android"][0]["sha256_cert"] == ":".join(["AB"] * 32)
    assert judge(android, android_package="com.example.app", android_cert=":".join(["ab"] * 32)) is None
    assert judge(android, android_package="com.example.other", android_cert=cert) == APP_NOT_ALLOWED
    assert judge(android, android_package="com.example.app") == APP_NOT_ALLOWED
    assert judge({"ios": ["com.Example.app"]}, ios_bundle_id="com.example.APP") is None
    assert judge({"ios": ["com.example.app"]}, ios_bundle_id="com.example.app2") == APP_NOT_ALLOWED


def test_canonical_forms_drop_duplicates_and_default_ports():
    assert parse_restrictions({"browser": ["HTTPS://App.Example.com:443/", "https://app.example.com"]}) == {
        "browser": ["https://app.example.com"]}
    assert parse_restrictions({"server": ["2001:DB8::/32", "10.0.0.1/32"]}) == {
        "server": ["2001:db8::/32", "10.0.0.1"]}
    assert parse_restrictions(None) is None


@pytest.mark.parametrize("pattern", ["*", "https://*", "https://*.com", "https://*.co.uk", "http://*:8080",
                                     "https://*.github.io/*"])
def test_a_pattern_for_every_site_is_refused_saying_why(pattern):
    with pytest.raises(InvalidRequest) as refused:
        parse_restrictions({"browser": [pattern]})
    assert "match every site" in refused.value.message or "wildcard scheme" in refused.value.message


def test_a_restriction_judges_only_the_facts_it_is_about():
    assert judged_by({"browser": ["https://a.com"]}, RequestFacts(origin="https://b.com"))
    assert not judged_by({"server": ["10.0.0.0/8"]}, RequestFacts(origin="https://b.com"))
    assert not judged_by(None, RequestFacts(ip="10.0.0.1"))


# -- the client's address behind proxies -----------------------------------------------------------

@pytest.mark.parametrize("peer,forwarded_for,forwarded,client", [
    ("127.0.0.1", None, None, "127.0.0.1"),
    ("127.0.0.1", "203.0.113.5", None, "203.0.113.5"),
    ("127.0.0.1", "198.51.100.9, 203.0.113.5", None, "203.0.113.5"),  # the left one was the client's word
    ("127.0.0.1", "203.0.113.5, 10.0.0.2", None, "203.0.113.5"),  # 10.0.0.2 is a trusted proxy here
    ("127.0.0.1", "10.0.0.3, 10.0.0.2", None, "10.0.0.3"),  # every hop trusted: the left-most
    ("127.0.0.1", "garbage", None, "garbage"),  # not an address: matches no restriction
    ("127.0.0.1", None, 'for="[2001:db8::7]:4711", for=203.0.113.5;proto=https', "203.0.113.5"),
    ("127.0.0.1", None, "for=203.0.113.5:8080", "203.0.113.5"),
    ("198.51.100.1", "203.0.113.5", None, "198.51.100.1"),  # an untrusted peer: its headers are ignored
])
def test_the_client_address_is_the_right_most_untrusted_hop(peer, forwarded_for, forwarded, client):
    proxies = TrustedProxies(["127.0.0.0/8", "::1/128", "10.0.0.0/8"])
    environ = {"REMOTE_ADDR": peer}
    if forwarded_for:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded_for
    if forwarded:
        environ["HTTP_FORWARDED"] = forwarded
    assert proxies.client_address(environ) == client


def test_the_peer_behind_proxy_fix_is_the_original_one():
    environ = {"REMOTE_ADDR": "203.0.113.5", "werkzeug.proxy_fix.orig": {"REMOTE_ADDR": "198.51.100.1"},
               "HTTP_X_FORWARDED_FOR": "203.0.113.5"}
    assert TrustedProxies().client_address(environ) == "198.51.100.1"


def test_request_facts_come_from_the_forwarded_headers():
    facts = request_facts({"REMOTE_ADDR": "127.0.0.1", "HTTP_ORIGIN": "https://a.com", "HTTP_REFERER": "https://a.com/x",
                           "HTTP_X_ANDROID_PACKAGE": "com.a.b", "HTTP_X_ANDROID_CERT": "AB",
                           "HTTP_X_IOS_BUNDLE_IDENTIFIER": "com.a.c", "HTTP_X_FORWARDED_FOR": "203.0.113.5"},
                          TrustedProxies())
    assert facts == RequestFacts("https://a.com", "https://a.com/x", "203.0.113.5", "com.a.b", "AB", "com.a.c")
