"""The web UI behind a TLS proxy: the client's address and scheme, believed only from trusted proxies.

waitress speaks plain HTTP, so on the internet a proxy (nginx, haproxy) terminates TLS in front of
it and passes on the client's address in `X-Forwarded-For` and the scheme in `X-Forwarded-Proto`.
Anyone can send those headers, so they count only when the peer is one of
MAIL_WEB_TRUSTED_PROXIES; from any other peer they are removed before Django reads them. This is
done here rather than by waitress's `trusted_proxy`, which takes a single address, not a list of
networks (a pool of load balancers), and which a WSGI server other than runweb would not have;
runweb turns waitress's own clearing of these headers off and leaves it to this middleware.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks: list[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_address(peer: str, forwarded_for: str, networks: list[Network]) -> str:
    """The client's address: the peer's own, unless it is a trusted proxy.

    Then the nearest address in X-Forwarded-For that is not itself a trusted proxy: each proxy
    appends the address it received from (RFC 7239 §5.2 says the same of Forwarded), so everything
    left of the first untrusted hop may have been written by the client and is ignored.
    """
    if not _trusted(_address(peer), networks):
        return peer
    client = peer
    for hop in reversed([part for part in forwarded_for.split(",") if part.strip()]):
        address = _address(hop)
        if address is None:
            break  # garbage: the last trusted hop is as far as we know
        client = str(address)
        if not _trusted(address, networks):
            break
    return client


class TrustedProxyMiddleware:
    """First in MIDDLEWARE: REMOTE_ADDR and the scheme header fixed before anything reads them.

    Django reads `X-Forwarded-Proto` through SECURE_PROXY_SSL_HEADER (set in settings when
    proxies are trusted); this removes the header from every request that did not come through a
    trusted proxy, so `request.is_secure()` cannot be claimed by a client.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self.networks = settings.MAIL_WEB_TRUSTED_PROXIES

    def __call__(self, request: HttpRequest) -> HttpResponse:
        meta = request.META
        peer = meta.get("REMOTE_ADDR", "")
        if _trusted(_address(peer), self.networks):
            meta["REMOTE_ADDR"] = client_address(peer, meta.get("HTTP_X_FORWARDED_FOR", ""), self.networks)
        else:
            for name in [k for k in meta if k.startswith("HTTP_X_FORWARDED_") or k == "HTTP_FORWARDED"]:
                del meta[name]
        meta.pop("HTTP_X_FORWARDED_FOR", None)  # what it could say is in REMOTE_ADDR now
        return self.get_response(request)
