"""The DNS that the authentication checks ask: `MAIL_DNS_SERVERS`, with one time budget per message.

The checks run in worker threads, never on a listener's event loop, so a blocking resolver is
used. A message's checks share one deadline (`MAIL_AUTH_DNS_TIMEOUT` seconds in all): however
many lookups SPF's includes or a message's DKIM signatures need, a slow or silent resolver costs
at most that long, and what it did not answer becomes `temperror` (RFC 7208 §2.6.6, RFC 8601
§2.7.1), never a lost or held message. Answers come from the process's DNS cache while their TTL
lasts (`mailcore.dnscache`), so the mail of one sender costs its lookups once per TTL.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

import dns.exception
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
from django.conf import settings

from mailcore.dnscache import cache_for


class DNSTemporaryError(Exception):
    """The lookup timed out or no server answered: a temperror, not an answer."""


class NotCached(Exception):
    """A resolver that only reads the cache (`cache_only`) met a name that is not in it."""


_resolvers: dict[tuple, dns.resolver.Resolver] = {}
_resolvers_lock = threading.Lock()


def _configured(servers: tuple, cache: dns.resolver.LRUCache | None) -> dns.resolver.Resolver:
    """dnspython's resolver for `servers` (the system's, from resolv.conf, when empty) and `cache`.

    Made once for each and shared by the threads: resolve() only reads its configuration, and
    reading resolv.conf for every message would cost more than the checks from the cache.
    """
    key = (servers, cache is not None)
    with _resolvers_lock:
        resolver = _resolvers.get(key)
        if resolver is None or resolver.cache is not cache:
            if servers:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in servers]
            else:
                resolver = dns.resolver.Resolver()
            resolver.cache = cache
            _resolvers[key] = resolver
        return resolver


class Reusable:
    """What was computed from DNS answers, kept for reuse until the first of those answers leaves
    the DNS cache (bounded, least recently used first out). The caller's key names the inputs
    and `TXTResolver.answers_from`; `put` is given `until`, the least of `lookup`'s times."""

    def __init__(self, max_size: int = 10000):
        self.max_size = max_size
        self.entries: OrderedDict[tuple, tuple[object, float]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple):
        """The value kept for `key`, or None."""
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            if entry[1] <= time.time():
                del self.entries[key]
                return None
            self.entries.move_to_end(key)
            return entry[0]

    def put(self, key: tuple, value, until: float) -> None:
        if until == math.inf or until <= time.time():  # no answer read, or one not cached
            return
        with self.lock:
            self.entries[key] = (value, until)
            self.entries.move_to_end(key)
            while len(self.entries) > self.max_size:
                self.entries.popitem(last=False)


class TXTResolver:
    """TXT, A, AAAA, MX and PTR lookups with a shared deadline."""

    def __init__(
        self, servers: list[tuple[str, int]] | None = None, budget: float | None = None, cached: bool = True, cache_only: bool = False
    ):
        """`cached=False` asks the servers every time: for checking what is published right now.

        `cache_only=True` never waits: an answer not in the cache raises NotCached (and sets
        `missed`, for a caller whose library swallows the exception), so that a check whose
        answers are all cached can run where blocking is not allowed.
        """
        servers = settings.MAIL_DNS_SERVERS if servers is None else servers
        self.servers = tuple(tuple(server) for server in servers)
        self.resolver = _configured(self.servers, cache_for(servers) if cached else None)
        # Whose answers these are: what is computed from them is reused only with the same ones.
        self.answers_from = (self.servers, self.resolver.cache.serial if self.resolver.cache is not None else 0)
        self.budget = settings.MAIL_AUTH_DNS_TIMEOUT if budget is None else budget
        self.deadline = time.monotonic() + self.budget
        self.cache_only = cache_only and self.resolver.cache is not None
        self.missed = cache_only and not self.cache_only

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def query(self, name: str, rdtype: str) -> list:
        """The rdata of the answer; [] for NXDOMAIN or NODATA; DNSTemporaryError otherwise."""
        return self.lookup(name, rdtype)[0]

    def lookup(self, name: str, rdtype: str) -> tuple[list, float]:
        """`query`'s answer, and until when the cache keeps it (time.time(); 0 when it does not):
        what is computed from cached answers alone may be reused as long as they are kept."""
        if self.cache_only:
            return self._cached(name, rdtype)
        # Once the budget is spent only cached answers come back: dnspython looks in the cache
        # before it measures the lifetime.
        lifetime = max(self.remaining(), 0.001)
        try:
            answer = self.resolver.resolve(name, rdtype, lifetime=lifetime, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return [], self._nxdomain_kept_until(name)
        except dns.resolver.NoAnswer:
            return [], 0.0
        except dns.name.LabelTooLong:
            return [], 0.0
        except dns.exception.Timeout as exc:
            raise DNSTemporaryError(f"DNS timeout for {rdtype} {name}") from exc
        except dns.exception.DNSException as exc:
            raise DNSTemporaryError(f"DNS error for {rdtype} {name}: {exc}") from exc
        kept = answer.expiration if self.resolver.cache is not None else 0.0
        return list(answer.rrset or []), kept

    def _nxdomain_kept_until(self, name: str) -> float:
        cache = self.resolver.cache
        if cache is None:
            return 0.0
        kept = cache.get((dns.name.from_text(name), dns.rdatatype.ANY, dns.rdataclass.IN))
        return kept.expiration if kept is not None else 0.0

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record of `name`, its strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(r.strings) for r in self.query(name, "TXT")]

    def _cached(self, name: str, rdtype: str) -> tuple[list, float]:
        """`lookup` from the cache alone, read as dnspython's resolver reads it."""
        if self.missed:
            raise NotCached(f"{rdtype} {name}")
        try:
            qname = dns.name.from_text(name)
        except dns.name.LabelTooLong:
            return [], 0.0
        cache = self.resolver.cache
        answer = cache.get((qname, dns.rdatatype.from_text(rdtype), dns.rdataclass.IN))
        if answer is not None:
            return list(answer.rrset or []), answer.expiration
        nxdomain = cache.get((qname, dns.rdatatype.ANY, dns.rdataclass.IN))
        if nxdomain is not None and nxdomain.response.rcode() == dns.rcode.NXDOMAIN:
            return [], nxdomain.expiration
        self.missed = True
        raise NotCached(f"{rdtype} {name}")
