"""Where mail for a domain goes: its MX hosts by preference, or its own address (RFC 5321 §5.1)."""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from django.conf import settings

from mailcore.dnscache import cache_for


class RoutingError(Exception):
    """No host to deliver to. `permanent` says whether trying again later could help."""

    def __init__(self, reason: str, *, permanent: bool, status: str):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.status = status  # the RFC 3463 enhanced status code for a DSN


@dataclass
class MailHost:
    """One MX host (or the domain itself, as an implicit MX) with the addresses we may connect to."""

    name: str
    preference: int
    addresses: list[str] = field(default_factory=list)
    implicit: bool = False  # no MX record: the domain's own A/AAAA (RFC 5321 §5.1)


def make_resolver(servers: list[tuple[str, int]] | None = None, timeout: float | None = None) -> dns.asyncresolver.Resolver:
    """An async resolver that asks `MAIL_DNS_SERVERS` when set, the system's resolvers otherwise, through the DNS cache."""
    servers = settings.MAIL_DNS_SERVERS if servers is None else servers
    if servers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in servers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = settings.MAIL_DNS_TIMEOUT if timeout is None else timeout
    resolver.timeout = resolver.lifetime
    resolver.cache = cache_for(servers)  # answers kept for their TTL, shared with the authentication checks
    return resolver


def is_public_address(address: str) -> bool:
    """True for an address on the public Internet: not loopback, private, link-local, reserved..."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_unspecified or ip.is_reserved)


def order_by_preference(records: list[tuple[int, str]], rng: random.Random | None = None) -> list[tuple[int, str]]:
    """Lowest preference first; hosts of equal preference in random order (RFC 5321 §5.1)."""
    rng = rng or random
    groups: dict[int, list[str]] = {}
    for preference, name in records:
        groups.setdefault(preference, []).append(name)
    ordered = []
    for preference in sorted(groups):
        names = groups[preference]
        rng.shuffle(names)
        ordered.extend((preference, name) for name in names)
    return ordered


class MXResolver:
    """Resolves a mail domain to the hosts to try, in order, with the private-address guard applied."""

    def __init__(self, resolver: dns.asyncresolver.Resolver | None = None, allow_private: bool | None = None):
        self.resolver = resolver or make_resolver()
        self.allow_private = settings.MAIL_ALLOW_PRIVATE_DESTINATIONS if allow_private is None else allow_private

    async def hosts(self, domain: str) -> list[MailHost]:
        """The hosts for `domain`, best first; raises RoutingError when there are none."""
        try:
            answer = await self.resolver.resolve(domain, "MX")
            records = [(r.preference, r.exchange) for r in answer]
        except dns.resolver.NXDOMAIN:
            raise RoutingError(f"domain {domain} does not exist", permanent=True, status="5.1.2") from None
        except dns.resolver.NoAnswer:
            records = None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise RoutingError(f"DNS lookup of MX for {domain} failed: {exc}", permanent=False, status="4.4.3") from None
        except dns.exception.DNSException as exc:
            raise RoutingError(f"DNS lookup of MX for {domain} failed: {exc}", permanent=False, status="4.4.3") from None

        if records is None:
            # RFC 5321 §5.1: no MX records, so the domain itself is the implicit MX, preference 0.
            hosts = [MailHost(name=domain, preference=0, implicit=True)]
        else:
            # RFC 7505 §3: a single MX whose exchange is the root, "." says "no mail here".
            if any(exchange == dns.name.root for _, exchange in records):
                raise RoutingError(f"domain {domain} does not accept mail (null MX, RFC 7505)", permanent=True, status="5.1.10")
            ordered = order_by_preference([(pref, exchange.to_text(omit_final_dot=True)) for pref, exchange in records])
            hosts = [MailHost(name=name, preference=pref) for pref, name in ordered]

        lookups = await asyncio.gather(*(self.addresses(host.name) for host in hosts))
        temporary_errors = []
        for host, (addresses, error) in zip(hosts, lookups, strict=False):
            host.addresses = addresses
            if error:
                temporary_errors.append(error)
        found = [host for host in hosts if host.addresses]
        if not found:
            if hosts[0].implicit and not temporary_errors:
                raise RoutingError(f"domain {domain} has no MX and no address records", permanent=True, status="5.1.2")
            reason = "; ".join(temporary_errors) or f"no address for any MX host of {domain}"
            raise RoutingError(reason, permanent=False, status="4.4.3")
        if not self.allow_private:
            for host in found:
                host.addresses = [a for a in host.addresses if is_public_address(a)]
            public = [host for host in found if host.addresses]
            if not public:
                # A domain whose MX points inside a network is misconfigured or hostile: we never go there.
                raise RoutingError(
                    f"the mail hosts of {domain} have only loopback, private or reserved addresses",
                    permanent=True,
                    status="5.4.4",
                )
            found = public
        return found

    async def addresses(self, name: str) -> tuple[list[str], str]:
        """(IPv6 and IPv4 addresses of `name`, temporary error text or '')."""
        results: list[str] = []
        errors: list[str] = []
        for rdtype in ("AAAA", "A"):
            try:
                answer = await self.resolver.resolve(name, rdtype)
                results.extend(r.address for r in answer)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                errors.append(f"DNS lookup of {rdtype} for {name} failed: {exc}")
        return results, ("; ".join(errors) if not results else "")
