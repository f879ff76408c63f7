"""Client restrictions of an API key: who may use it, judged from the facts of the request.

A key carries at most one kind of restriction (none by default):

- ``browser``: the pages that may use it, as patterns (``https://app.example.com``,
  ``https://*.example.com/*``, ``http://localhost:*``), matched against the request's
  ``Origin``, else its ``Referer``;
- ``server``: client addresses, IPv4/IPv6 addresses and CIDR blocks;
- ``android``: (package name, SHA-256 signing-certificate fingerprint) pairs;
- ``ios``: bundle ids.

``parse_restrictions`` turns what a caller sent into the canonical plain value an event stores
(or raises ``InvalidRequest`` naming the field and the bad item); ``compile_restriction`` turns
that value into a ``Restriction`` whose ``refusal(facts)`` is cheap: patterns are compiled to
one regular expression, networks to integer masks, pairs to a set, once, when the index learns
the key. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.domain.errors import InvalidRequest

BROWSER = "browser"
SERVER = "server"
ANDROID = "android"
IOS = "ios"
KINDS = (BROWSER, SERVER, ANDROID, IOS)

# The refusal codes, each with the sentence a refused caller reads.
ORIGIN_NOT_ALLOWED = "ORIGIN_NOT_ALLOWED"
IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
APP_NOT_ALLOWED = "APP_NOT_ALLOWED"
REFUSALS = {
    ORIGIN_NOT_ALLOWED: "This key may only be used from the web pages its owner allowed; call from one of "
                        "them (the browser sends Origin or Referer), or ask the owner to add yours.",
    IP_NOT_ALLOWED: "This key may only be used from the client addresses its owner allowed; call from one "
                    "of them, or ask the owner to add yours.",
    APP_NOT_ALLOWED: "This key may only be used by the mobile apps its owner allowed; send the app's "
                     "X-Android-Package and X-Android-Cert (or X-Ios-Bundle-Identifier) headers, or ask "
                     "the owner to add the app.",
}
DESCRIPTIONS = {  # one line each, for the console and the docs
    BROWSER: "for a web page: the sites that may use it (matched against Origin or Referer)",
    SERVER: "for a server: the client addresses (IPs and CIDR blocks) that may use it",
    ANDROID: "for an Android app: its package name and signing-certificate SHA-256 fingerprint",
    IOS: "for an iOS app: its bundle ids",
}

MAX_ITEMS = 100
MAX_TEXT = 255
# Each compiled restriction remembers its verdicts for this many distinct facts (origins, pages,
# addresses): a key is called from a few of them again and again, and a dict look-up costs a
# tenth of a regular expression's match. Past it, facts are judged afresh (never evicted: a
# flood of made-up origins cannot push the real ones out).
SEEN_MAX = 1024


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the request says about its client; any may be missing (None)."""

    origin: str | None = None
    referrer: str | None = None
    ip: str | None = None
    android_package: str | None = None
    android_cert: str | None = None
    ios_bundle_id: str | None = None


NO_FACTS = RequestFacts()
FACT_FIELDS = ("origin", "referrer", "ip", "android_package", "android_cert", "ios_bundle_id")
# Facts come as the value itself or as a function that builds it when first needed (forward-auth
# reads the request's headers only for a restricted key).
Facts = RequestFacts | Callable[[], RequestFacts]


# -- parsing and validating ------------------------------------------------------------------------

def _refuse(field: str, item: Any, why: str) -> InvalidRequest:
    shown = item if isinstance(item, str) and len(item) <= 300 else repr(item)[:300]
    return InvalidRequest(f"{field}: {shown!r} is not acceptable: {why}", **{field: [f"{shown}: {why}"]})


def parse_restrictions(value: Any, field: str = "restrictions") -> dict | None:
    """The canonical form of a key's restrictions (None: no restriction), or ``InvalidRequest``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} is null or an object with one of {', '.join(KINDS)}.",
                             **{field: ["Must be null or an object such as {\"browser\": [\"https://app.example.com\"]}."]})
    if len(value) != 1:
        unknown = [k for k in value if k not in KINDS]
        why = (f"unknown kind(s) {', '.join(map(str, unknown))}; use one of {', '.join(KINDS)}" if unknown
               else f"give exactly one kind of restriction ({', '.join(KINDS)})")
        raise InvalidRequest(f"{field}: {why}.", **{field: [why[0].upper() + why[1:] + "."]})
    (kind, items), = value.items()
    if kind not in KINDS:
        raise InvalidRequest(f"{field}: unknown kind {kind!r}; use one of {', '.join(KINDS)}.",
                             **{field: [f"Unknown kind {kind!r}; use one of {', '.join(KINDS)}."]})
    path = f"{field}.{kind}"
    if not isinstance(items, list) or not items:
        raise InvalidRequest(f"{path} must be a non-empty list (use null to remove the restriction).",
                             **{path: ["Must be a non-empty list."]})
    if len(items) > MAX_ITEMS:
        raise InvalidRequest(f"{path}: at most {MAX_ITEMS} items.", **{path: [f"At most {MAX_ITEMS} items."]})
    parse = _PARSERS[kind]
    canonical: list = []
    for item in items:
        parsed = parse(path, item)
        if parsed not in canonical:
            canonical.append(parsed)
    return {kind: canonical}


def _text(path: str, item: Any) -> str:
    if not isinstance(item, str):
        raise _refuse(path, item, "must be a string")
    if not item or len(item) > MAX_TEXT:
        raise _refuse(path, item, f"must be 1 to {MAX_TEXT} characters")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in item):
        raise _refuse(path, item, "must not contain spaces, control or non-ASCII characters "
                                  "(write an international domain name in its xn-- form)")
    return item


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SCHEMES = {"http": 80, "https": 443}
# Wildcards under these would allow every site of a registry: refused like "*.com".
_PUBLIC_SUFFIXES = frozenset((
    "co.uk", "org.uk", "ac.uk", "gov.uk", "com.au", "net.au", "org.au", "co.jp", "ne.jp", "co.nz",
    "co.in", "co.za", "com.br", "com.cn", "com.mx", "com.tr", "co.kr", "github.io", "herokuapp.com",
    "vercel.app", "netlify.app", "pages.dev", "web.app", "firebaseapp.com", "appspot.com",
    "azurewebsites.net", "cloudfront.net", "blogspot.com", "s3.amazonaws.com", "workers.dev",
))
_EVERY_SITE = ("it would match every site, so it would protect nothing; name your own domain, "
               "e.g. https://*.example.com")


def _browser_pattern(path: str, item: Any) -> str:
    text = _text(path, item)
    scheme, sep, rest = text.partition("://")
    if not sep:
        bare = text.split("/")[0].split(":")[0]
        if bare.startswith("*") and "." not in bare.lstrip("*."):  # "*", "*.com"
            raise _refuse(path, item, _EVERY_SITE)
        raise _refuse(path, item, "must start with http:// or https://")
    scheme = scheme.lower()
    if scheme == "*" and rest.split("/")[0].split(":")[0] == "*":
        raise _refuse(path, item, _EVERY_SITE)
    if scheme == "*" or scheme not in _SCHEMES:
        raise _refuse(path, item, "the scheme must be http or https (a wildcard scheme is not allowed)")
    for bad, why in (("?", "must not contain a query"), ("#", "must not contain a fragment"),
                     ("@", "must not contain a user name"), ("\\", "must not contain a backslash")):
        if bad in rest:
            raise _refuse(path, item, why)
    authority, slash, page = rest.partition("/")
    page = slash + page
    if authority.startswith("["):
        host, bracket, port_part = authority[1:].partition("]")
        if not bracket or (port_part and not port_part.startswith(":")):
            raise _refuse(path, item, "an IPv6 address is written in brackets, e.g. http://[::1]:8080")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _refuse(path, item, f"{host!r} is not an IPv6 address") from None
        host = "[" + str(ipaddress.IPv6Address(host)) + "]"
        port = port_part[1:] if port_part else None
    else:
        host, colon, port = authority.partition(":")
        port = port if colon else None
        host = host.lower()
        if not host:
            raise _refuse(path, item, "give a host name")
        if host == "*" or host.startswith("*") and not host.startswith("*."):
            raise _refuse(path, item, _EVERY_SITE if host == "*" else
                          "a wildcard may only stand for a whole leftmost label, as in *.example.com")
        labels = host.split(".")
        wildcard = labels[0] == "*"
        named = labels[1:] if wildcard else labels
        if "*" in "".join(named):
            raise _refuse(path, item, "a wildcard may only stand for a whole leftmost label, as in *.example.com")
        if not all(_LABEL.match(label) for label in named):
            raise _refuse(path, item, f"{host!r} is not a valid host name")
        if wildcard and (len(named) < 2 or ".".join(named) in _PUBLIC_SUFFIXES):
            raise _refuse(path, item, f"*.{'.'.join(named)} {_EVERY_SITE.replace('it would', 'would')}")
        if named[-1].isdigit():
            try:
                ipaddress.IPv4Address(".".join(named))
            except ValueError:
                raise _refuse(path, item, f"{host!r} is neither a host name nor an IPv4 address") from None
            if wildcard:
                raise _refuse(path, item, "a wildcard cannot stand in an IP address")
    if port is not None:
        if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535 and not port.startswith("0")):
            raise _refuse(path, item, "the port must be a number from 1 to 65535, or *")
        if port != "*" and int(port) == _SCHEMES[scheme]:
            port = None  # the scheme's default: browsers leave it out
    if page not in ("", "/"):
        if not page.startswith("/") or "*" in page[:-1]:
            raise _refuse(path, item, "a wildcard in the path may only end it, as in https://example.com/app/*")
        if "/../" in page + "/" or "/./" in page + "/":
            raise _refuse(path, item, "the path must not contain . or .. segments")
    else:
        page = ""
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "") + page


def _server_address(path: str, item: Any) -> str:
    text = _text(path, item)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        if "has host bits set" in str(error):
            suggestion = ipaddress.ip_network(text, strict=False)
            raise _refuse(path, item, f"has bits set beyond the prefix; did you mean {suggestion}?") from None
        raise _refuse(path, item, "must be an IPv4 or IPv6 address or a CIDR block such as 203.0.113.0/24") from None
    if network.prefixlen == 0:
        raise _refuse(path, item, "would allow every address, so it would protect nothing; "
                                  "name your own addresses")
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


_PACKAGE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$")
_HEX64 = re.compile(r"^[0-9A-F]{64}$")


def fingerprint_hex(text: str) -> str | None:
    """A SHA-256 fingerprint as 64 upper-case hex digits (colons allowed), or None."""
    plain = text.replace(":", "").upper()
    return plain if len(plain) == 64 and _HEX64.match(plain) else None


def _android_app(path: str, item: Any) -> dict:
    if not isinstance(item, dict) or set(item) != {"package", "sha256_cert"}:
        raise _refuse(path, item, 'must be an object {"package": "com.example.app", "sha256_cert": '
                                  '"<SHA-256 fingerprint>"} and nothing else')
    package = _text(path, item["package"])
    if not _PACKAGE.match(package):
        raise _refuse(path, package, "is not an Android package name (letters, digits and _ in two or more "
                                     "dot-separated parts, each starting with a letter)")
    cert = item["sha256_cert"]
    digits = fingerprint_hex(_text(path, cert))
    colons = cert.count(":")
    if digits is None or colons not in (0, 31) or (colons and any(
            cert[i] != ":" for i in range(2, len(cert), 3))):
        raise _refuse(path, cert, "is not a SHA-256 fingerprint: 32 bytes in hex, e.g. as keytool "
                                  "prints it (AB:CD:…, 95 characters) or 64 hex digits")
    return {"package": package, "sha256_cert": ":".join(digits[i:i + 2] for i in range(0, 64, 2))}


_BUNDLE = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def _ios_bundle(path: str, item: Any) -> str:
    text = _text(path, item)
    if not _BUNDLE.match(text):
        raise _refuse(path, item, "is not an iOS bundle id (letters, digits and hyphens in two or more "
                                  "dot-separated parts, e.g. com.example.app)")
    return text


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    BROWSER: _browser_pattern, SERVER: _server_address, ANDROID: _android_app, IOS: _ios_bundle,
}


# -- matching ----------------------------------------------------------------------------------------

class Restriction:
    """A compiled restriction: ``refusal(facts)`` is None when the facts satisfy it, else the code."""

    __slots__ = ("kind", "value")
    kind: str

    def __init__(self, value: dict) -> None:
        self.value = value

    def refusal(self, facts: RequestFacts) -> str | None:  # pragma: no cover - overridden
        raise NotImplementedError


def _pattern_regex(pattern: str, *, with_path: bool) -> str:
    scheme, _, rest = pattern.partition("://")
    authority, slash, page = rest.partition("/")
    page = slash + page
    if authority.startswith("["):
        host, _, port_part = authority.partition("]")
        host += "]"
        port = port_part[1:] or None
    else:
        host, colon, port = authority.partition(":")
        port = port if colon else None
    host_re = (r"(?:[a-z0-9-]+\.)+" + re.escape(host[2:])) if host.startswith("*.") else re.escape(host)
    if port == "*":
        port_re = r"(?::[0-9]{1,5})?"
    elif port is None:
        port_re = f"(?::{_SCHEMES[scheme]})?"
    else:
        port_re = ":" + port
    if not with_path:
        path_re = "/?"  # an Origin carries no path: only scheme, host and port are judged
    elif page.endswith("*"):
        path_re = re.escape(page[:-1]) + ".*" if page != "/*" else "(?:/.*)?"
    elif page:
        path_re = re.escape(page) + r"(?:[?].*)?"
    else:
        path_re = "(?:/.*)?"
    return re.escape(scheme) + "://" + host_re + port_re + path_re


class BrowserRestriction(Restriction):
    __slots__ = ("_origin", "_referrer", "_origins", "_referrers")
    kind = BROWSER

    def __init__(self, value: dict) -> None:
        super().__init__(value)
        patterns = value[BROWSER]
        self._origin = re.compile("|".join(f"(?:{_pattern_regex(p, with_path=False)})" for p in patterns),
                                  re.IGNORECASE).fullmatch
        self._referrer = re.compile("|".join(f"(?:{_pattern_regex(p, with_path=True)})" for p in patterns),
                                    re.IGNORECASE).fullmatch
        self._origins: dict[str, str] = {}  # fact -> "" (allowed) or the code
        self._referrers: dict[str, str] = {}

    def refusal(self, facts: RequestFacts) -> str | None:
        origin = facts.origin
        if origin:  # judged on its own ("null", a sandboxed page or a file, matches no pattern)
            known = self._origins.get(origin)
            if known is None:
                known = _learn(self._origins, origin, self._origin(origin) is not None, ORIGIN_NOT_ALLOWED)
            return known or None
        referrer = facts.referrer
        if not referrer:
            return ORIGIN_NOT_ALLOWED
        known = self._referrers.get(referrer)
        if known is None:
            known = _learn(self._referrers, referrer, self._referrer(referrer) is not None, ORIGIN_NOT_ALLOWED)
        return known or None


def _learn(seen: dict[str, str], fact: str, allowed: bool, code: str) -> str:
    verdict = "" if allowed else code
    if len(seen) < SEEN_MAX:
        seen[fact] = verdict
    return verdict


_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes
_MAPPED = 0xFFFF << 32  # ::ffff:a.b.c.d, an IPv4 address in an IPv6 socket


def address_number(text: str) -> tuple[int, int] | None:
    """(4 or 6, the address as an integer), or None if ``text`` is not an IP address. IPv4-mapped
    IPv6 addresses count as IPv4. (inet_pton: a tenth of ``ipaddress.ip_address``'s cost.)"""
    try:
        if ":" not in text:
            return 4, _from_bytes(_inet_pton(socket.AF_INET, text), "big")
        number = _from_bytes(_inet_pton(socket.AF_INET6, text.partition("%")[0]), "big")
    except (OSError, ValueError, TypeError):
        return None
    if number >> 32 == 0xFFFF:
        return 4, number & 0xFFFFFFFF
    return 6, number


class ServerRestriction(Restriction):
    __slots__ = ("_networks", "_seen")
    kind = SERVER

    def __init__(self, value: dict) -> None:
        super().__init__(value)
        networks = []
        for text in value[SERVER]:
            network = ipaddress.ip_network(text)
            mask = int(network.netmask)
            networks.append((network.version, mask, int(network.network_address) & mask))
        self._networks = tuple(networks)
        self._seen: dict[str, str] = {}  # address -> "" or the code

    def refusal(self, facts: RequestFacts) -> str | None:
        ip = facts.ip
        if not ip:
            return IP_NOT_ALLOWED
        known = self._seen.get(ip)
        if known is None:
            address, allowed = address_number(ip), False
            if address is not None:
                version, number = address
                allowed = any(v == version and number & mask == network for v, mask, network in self._networks)
            known = _learn(self._seen, ip, allowed, IP_NOT_ALLOWED)
        return known or None


class AndroidRestriction(Restriction):
    __slots__ = ("_apps",)
    kind = ANDROID

    def __init__(self, value: dict) -> None:
        super().__init__(value)
        self._apps = frozenset((app["package"], app["sha256_cert"].replace(":", "")) for app in value[ANDROID])

    def refusal(self, facts: RequestFacts) -> str | None:
        package, cert = facts.android_package, facts.android_cert
        if package and cert and (package, cert.replace(":", "").upper()) in self._apps:
            return None
        return APP_NOT_ALLOWED


class IosRestriction(Restriction):
    __slots__ = ("_bundles",)
    kind = IOS

    def __init__(self, value: dict) -> None:
        super().__init__(value)
        self._bundles = frozenset(bundle.lower() for bundle in value[IOS])

    def refusal(self, facts: RequestFacts) -> str | None:
        bundle = facts.ios_bundle_id
        return None if bundle and bundle.lower() in self._bundles else APP_NOT_ALLOWED


_COMPILED: dict[str, type[Restriction]] = {
    BROWSER: BrowserRestriction, SERVER: ServerRestriction, ANDROID: AndroidRestriction, IOS: IosRestriction,
}


def compile_restriction(value: dict | None) -> Restriction | None:
    """The matcher of a canonical restriction value (from an event or a view), None for none."""
    if not value:
        return None
    (kind,) = value
    return _COMPILED[kind](value)


def judged_by(restriction: dict | None, facts: RequestFacts) -> bool:
    """Whether ``facts`` hold anything the restriction judges (for questions such as "which keys
    could be used from origin O": a restriction whose facts the question leaves out excludes no
    key)."""
    if not restriction:
        return False
    (kind,) = restriction
    if kind == BROWSER:
        return bool(facts.origin or facts.referrer)
    if kind == SERVER:
        return bool(facts.ip)
    if kind == ANDROID:
        return bool(facts.android_package or facts.android_cert)
    return bool(facts.ios_bundle_id)
