"""Where a webhook may be delivered: the SSRF rules.

By default a target must be ``https`` and every address its host resolves to must be a public
unicast address: loopback, private (RFC 1918, unique local), link-local (which holds the clouds'
metadata service, 169.254.169.254), shared, reserved, multicast and unspecified addresses are
refused, and so are IPv4-mapped IPv6 forms of them. The check runs when the endpoint is
registered (on the URL as written) and again at every delivery, on the addresses the name
resolves to *then* — and the connection goes to the checked address itself, so a DNS answer
that changes between the check and the connect (DNS rebinding) cannot redirect it.
``KEYLEDGER_WEBHOOKS_ALLOW_PRIVATE=1`` allows private addresses and ``http`` (tests, private networks).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from service.webhooks.domain import InvalidWebhookUrl

URL_MAX = 2000
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
             ipaddress.ip_address("100.100.100.200")}  # AWS/GCP/Azure, AWS IPv6, Alibaba


class RefusedTarget(Exception):
    """The target may not be delivered to (said in the delivery log; never retried sooner)."""


def address_problem(address: str) -> str | None:
    """Why a delivery may not go to ``address`` by default (None: a public address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return f"{address} is a cloud metadata address"
    if ip.is_loopback:
        return f"{address} is a loopback address"
    if ip.is_link_local:
        return f"{address} is a link-local address"
    if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified or not ip.is_global:
        return f"{address} is a private or reserved address"
    return None


def check_url(url: object, *, allow_private: bool) -> str:
    """The URL as it will be used, or InvalidWebhookUrl naming the ``url`` field."""
    def refuse(message: str) -> InvalidWebhookUrl:
        return InvalidWebhookUrl(message, url=[message])

    if not isinstance(url, str) or not url or len(url) > URL_MAX:
        raise refuse(f"Give an absolute https URL of at most {URL_MAX} characters.")
    if not url.isascii():
        raise refuse("Give the URL in ASCII (an international name in its xn-- form, other characters %-encoded).")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise refuse("The URL contains a space or a control character.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("Not a URL.") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise refuse("Webhooks are delivered over https only." if not allow_private
                      else "Give an http or https URL.")
    if not parts.hostname:
        raise refuse("The URL has no host.")
    if parts.username or parts.password:
        raise refuse("Credentials in the URL are not accepted; the payload is signed instead.")
    if parts.fragment:
        raise refuse("A URL with a fragment (#…) cannot be delivered to.")
    if port == 0:
        raise refuse("Port 0 cannot be delivered to.")
    if not allow_private:
        host = parts.hostname
        try:
            problem = address_problem(host)
        except ValueError:  # a name: resolved at delivery time; the obvious ones refused now
            lowered = host.rstrip(".").lower()
            problem = (f"{host} names this machine" if lowered == "localhost" or lowered.endswith(".localhost")
                       else None)
        if problem:
            raise refuse(f"Refused target: {problem}.")
    return url


def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """The address to connect to: every address ``host`` resolves to now is checked (one bad
    answer refuses the target: a name that resolves partly inside is inside), the first returned."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise OSError(f"cannot resolve {host}: {error}") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    if not allow_private:
        for address in addresses:
            if problem := address_problem(address):
                raise RefusedTarget(f"refused target: {host} resolves to {problem.split(' is ', 1)[0]}, "
                                    f"which is {problem.split(' is ', 1)[1]}")
    return addresses[0]
