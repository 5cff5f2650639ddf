"""The DNS answers this process remembers: one dnspython LRUCache per set of resolvers, shared by
the authentication checks and the MX lookups.

dnspython's cache keeps each answer until its TTL has passed (the least TTL of the answer's
records), and a negative answer (NXDOMAIN, or NODATA) for its negative TTL: the lesser of the
SOA's TTL and its MINIMUM field (RFC 2308 §3, §5), as dnspython computes it. On top of that, a
negative answer without an SOA is not kept at all (RFC 2308 §5: SHOULD NOT be cached; dnspython
would keep it five minutes); a negative answer is kept at most `MAIL_DNS_CACHE_NEGATIVE_TTL`
seconds, so that a DKIM key or SPF record published just after a lookup missed it counts soon;
any answer at most MAX_TTL, a day, as caching resolvers such as Unbound cap it. A TTL of 0 is
never kept (RFC 1035 §3.2.1: only for the transaction in progress).

The key is the set of servers: tests and `MAIL_DNS_SERVERS` that change between resolvers never
see one another's answers.
"""

from __future__ import annotations

import itertools
import threading
import time

import dns.rdatatype
import dns.resolver
from django.conf import settings

MAX_TTL = 86400
_serials = itertools.count(1)


class CappedCache(dns.resolver.LRUCache):
    """dnspython's LRUCache with the TTL caps above applied as answers are put in."""

    def __init__(self, max_size: int, negative_ttl: float, max_ttl: float = MAX_TTL):
        super().__init__(max_size)
        self.negative_ttl = negative_ttl
        self.max_ttl = max_ttl
        # Which cache this is: what is computed from its answers names it, and is not reused
        # once it has been dropped (forget_all).
        self.serial = next(_serials)

    def put(self, key, value: dns.resolver.Answer) -> None:
        """Keep `value` until its capped expiration; one that is not kept expires now (nothing
        computed from it is reused: TXTResolver.lookup)."""
        now = time.time()
        if value.rrset is None and not any(r.rdtype == dns.rdatatype.SOA for r in value.response.authority):
            value.expiration = now
            return
        cap = self.negative_ttl if value.rrset is None else self.max_ttl
        value.expiration = min(value.expiration, now + cap)
        if value.expiration > now:
            super().put(key, value)


_caches: dict[tuple, CappedCache] = {}
_lock = threading.Lock()


def cache_for(servers: list[tuple[str, int]] | None = None) -> CappedCache | None:
    """The cache of answers from `servers` (default `MAIL_DNS_SERVERS`; [] is the system's); None when caching is off."""
    size = settings.MAIL_DNS_CACHE_SIZE
    if size <= 0:
        return None
    servers = settings.MAIL_DNS_SERVERS if servers is None else servers
    key = tuple(tuple(s) for s in servers)
    with _lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = CappedCache(size, settings.MAIL_DNS_CACHE_NEGATIVE_TTL)
        return cache


def forget_all() -> None:
    """Drop every cached answer (tests start each with an empty cache)."""
    with _lock:
        _caches.clear()
