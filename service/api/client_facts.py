"""The facts of a forwarded request that a restricted key is judged by (forward-auth).

``Origin``, ``Referer`` and the mobile headers are read as the gateway forwarded them. The
client's address is the peer's (``REMOTE_ADDR``) unless the peer is one of the trusted proxies
(``KEYLEDGER_TRUSTED_PROXIES``, CIDRs; loopback only by default): then it is the right-most
address of ``X-Forwarded-For`` (else of ``Forwarded``'s ``for=``) that is not itself a trusted
proxy. Everything to the left of that address was written by the client and proves nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from service.domain.restrictions import RequestFacts, address_number

DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")
_MAX_HEADER = 2048  # longer header values are cut (a pattern is at most 255 characters)


class TrustedProxies:
    """Networks whose forwarding headers are believed."""

    __slots__ = ("_networks",)

    def __init__(self, cidrs: Iterable[str] = DEFAULT_TRUSTED_PROXIES) -> None:
        networks = []
        for cidr in cidrs:
            network = ipaddress.ip_network(cidr, strict=False)
            mask = int(network.netmask)
            networks.append((network.version, mask, int(network.network_address) & mask))
        self._networks = tuple(networks)

    def trusts(self, address: str) -> bool:
        number = address_number(address)
        if number is None:
            return False
        version, value = number
        return any(v == version and value & mask == net for v, mask, net in self._networks)

    def client_address(self, environ: dict) -> str | None:
        """The client's address: the right-most untrusted hop, read only through trusted proxies."""
        # ProxyFix (KEYLEDGER_PROXY_HOPS) may have rewritten REMOTE_ADDR: judge the real peer.
        original = environ.get("werkzeug.proxy_fix.orig")
        peer = (original or {}).get("REMOTE_ADDR") or environ.get("REMOTE_ADDR")
        if not peer or not self.trusts(peer):
            return peer
        forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        hops = ([hop.strip() for hop in forwarded_for.split(",")] if forwarded_for
                else _forwarded_for(environ.get("HTTP_FORWARDED", "")))
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop or None  # a hop that is not an address matches no restriction
        return hops[0] if hops else peer


def _forwarded_for(header: str) -> list[str]:
    """The ``for=`` values of RFC 7239 ``Forwarded`` elements, left to right, without port or quotes."""
    hops = []
    for element in header.split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() != "for":
                continue
            value = value.strip().strip('"')
            if value.startswith("["):
                value = value[1:].partition("]")[0]
            elif value.count(":") == 1:
                value = value.partition(":")[0]
            hops.append(value)
    return hops


def _header(environ: dict, name: str) -> str | None:
    value = environ.get(name)
    return value[:_MAX_HEADER] if value else None


def request_facts(environ: dict, proxies: TrustedProxies) -> RequestFacts:
    """The facts of the request the gateway forwarded (read when a restricted key needs them)."""
    return RequestFacts(
        origin=_header(environ, "HTTP_ORIGIN"), referrer=_header(environ, "HTTP_REFERER"),
        ip=proxies.client_address(environ), android_package=_header(environ, "HTTP_X_ANDROID_PACKAGE"),
        android_cert=_header(environ, "HTTP_X_ANDROID_CERT"),
        ios_bundle_id=_header(environ, "HTTP_X_IOS_BUNDLE_IDENTIFIER"))
