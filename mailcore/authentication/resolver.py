"""The DNS that the authentication checks ask: `MAIL_DNS_SERVERS`, with one time budget per message.

The checks run in worker threads, never on a listener's event loop, so a blocking resolver is
used. A message's checks share one deadline (`MAIL_AUTH_DNS_TIMEOUT` seconds in all): however
many lookups SPF's includes or a message's DKIM signatures need, a slow or silent resolver costs
at most that long, and what it did not answer becomes `temperror` (RFC 7208 §2.6.6, RFC 8601
§2.7.1), never a lost or held message. Answers come from the process's DNS cache while their TTL
lasts (`mailcore.dnscache`), so the mail of one sender costs its lookups once per TTL.
"""

from __future__ import annotations

import time

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
        if servers:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in servers]
        else:
            self.resolver = dns.resolver.Resolver()
        self.resolver.cache = cache_for(servers) if cached else None
        self.budget = settings.MAIL_AUTH_DNS_TIMEOUT if budget is None else budget
        self.deadline = time.monotonic() + self.budget
        self.cache_only = cache_only and self.resolver.cache is not None
        self.missed = cache_only and not self.cache_only

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def query(self, name: str, rdtype: str) -> list:
        """The rdata of the answer; [] for NXDOMAIN or NODATA; DNSTemporaryError otherwise."""
        if self.cache_only:
            return self._cached(name, rdtype)
        # Once the budget is spent only cached answers come back: dnspython looks in the cache
        # before it measures the lifetime.
        lifetime = max(self.remaining(), 0.001)
        try:
            answer = self.resolver.resolve(name, rdtype, lifetime=lifetime, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.name.LabelTooLong:
            return []
        except dns.exception.Timeout as exc:
            raise DNSTemporaryError(f"DNS timeout for {rdtype} {name}") from exc
        except dns.exception.DNSException as exc:
            raise DNSTemporaryError(f"DNS error for {rdtype} {name}: {exc}") from exc
        return list(answer.rrset or [])

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record of `name`, its strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(r.strings) for r in self.query(name, "TXT")]

    def _cached(self, name: str, rdtype: str) -> list:
        """`query` from the cache alone, read as dnspython's resolver reads it."""
        if self.missed:
            raise NotCached(f"{rdtype} {name}")
        try:
            qname = dns.name.from_text(name)
        except dns.name.LabelTooLong:
            return []
        cache = self.resolver.cache
        answer = cache.get((qname, dns.rdatatype.from_text(rdtype), dns.rdataclass.IN))
        if answer is not None:
            return list(answer.rrset or [])
        nxdomain = cache.get((qname, dns.rdatatype.ANY, dns.rdataclass.IN))
        if nxdomain is not None and nxdomain.response.rcode() == dns.rcode.NXDOMAIN:
            return []
        self.missed = True
        raise NotCached(f"{rdtype} {name}")
