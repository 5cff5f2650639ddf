"""SPF (RFC 7208): may this client address send mail for the reverse-path's (or HELO's) domain?

pyspf implements the whole of RFC 7208 (macros, the ten-lookup and void-lookup limits,
include/redirect, exp=), which we would otherwise write and get wrong; its DNS goes through our
resolver (`_lookup` below), so the test DNS server and `MAIL_DNS_SERVERS` apply, and our time
budget with it.
"""

from __future__ import annotations

import contextvars
import ipaddress
from dataclasses import dataclass

import spf as pyspf

from mailcore.authentication.resolver import DNSTemporaryError, TXTResolver

# The resolver of the check running in this thread: pyspf looks names up through one
# module-level function, which reads it from here (each worker thread has its own context).
_resolver: contextvars.ContextVar[TXTResolver] = contextvars.ContextVar("spf_resolver")


def _lookup(name: str, qtype: str, strict=True, timeout=None) -> list:
    """pyspf's DNSLookup: [((name, type), value), ...], raising its TempError for ours."""
    try:
        records = _resolver.get().query(name, qtype)
    except DNSTemporaryError as exc:
        raise pyspf.TempError(str(exc)) from None
    answer = []
    for r in records:
        if qtype in ("A", "AAAA"):
            value = r.address
        elif qtype == "MX":
            value = (r.preference, r.exchange.to_text(omit_final_dot=True))
        elif qtype == "PTR":
            value = r.target.to_text(omit_final_dot=True)
        elif qtype in ("TXT", "SPF"):
            value = r.strings
        else:
            continue
        answer.append(((name, qtype), value))
    return answer


pyspf.DNSLookup = _lookup


@dataclass(frozen=True)
class SPFResult:
    result: str  # pass, fail, softfail, neutral, none, permerror, temperror (RFC 7208 §2.6)
    identity: str  # "mailfrom" or "helo" (RFC 7208 §2.3, §2.4)
    domain: str  # the domain checked
    explanation: str = ""
    sender: str = ""  # the identity as given: the reverse-path, or the HELO name

    @property
    def property(self) -> str:
        """The RFC 8601 §2.7.2 property: smtp.mailfrom or smtp.helo."""
        return f"smtp.{self.identity}"


def check_host(resolver: TXTResolver, client_address: str, mail_from: str, helo: str) -> SPFResult:
    """RFC 7208 §4: the result for the MAIL FROM identity, or for HELO's when the reverse-path is null."""
    identity = "mailfrom" if mail_from else "helo"
    sender = mail_from or helo
    domain = (mail_from.rpartition("@")[2] if mail_from else helo).lower().rstrip(".")
    if not domain or not is_domain(domain):
        return SPFResult("none", identity, domain, "no domain to check", sender)
    try:
        ipaddress.ip_address(client_address)
    except ValueError:
        return SPFResult("none", identity, domain, "no client address", sender)
    token = _resolver.set(resolver)
    try:
        query = pyspf.query(client_address, mail_from or "", helo or domain, timeout=max(resolver.remaining(), 0.1))
        result, _code, explanation = query.check()
    finally:
        _resolver.reset(token)
    return SPFResult(result, identity, domain, explanation, sender)


def check_helo(resolver: TXTResolver, client_address: str, helo: str) -> SPFResult:
    """RFC 7208 §2.3: the HELO identity on its own (recommended; DMARC uses the MAIL FROM result)."""
    return check_host(resolver, client_address, "", helo)


def is_domain(name: str) -> bool:
    """A dotted name, not an address literal: HELO may be either (RFC 5321 §4.1.1.1)."""
    if name.startswith("[") or "." not in name:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False
