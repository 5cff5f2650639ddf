"""SPF (RFC 7208): may this client address send mail for the reverse-path's (or HELO's) domain?

pyspf implements the whole of RFC 7208 (macros, the ten-lookup and void-lookup limits,
include/redirect, exp=), which we would otherwise write and get wrong; its DNS goes through our
resolver (`_lookup` below), so the test DNS server and `MAIL_DNS_SERVERS` apply, and our time
budget with it.

A result is a function of its inputs (client address, reverse-path, HELO name) and of the DNS
answers it read, so it is reused for the same inputs for as long as every one of those answers
is in the DNS cache: the mail of one sender from one server costs one evaluation per TTL, and
a record that changes counts as soon as the cached answer would have expired anyway.
"""

from __future__ import annotations

import contextvars
import ipaddress
import math
from dataclasses import dataclass

import spf as pyspf

from mailcore.authentication.resolver import DNSTemporaryError, Reusable, TXTResolver

# The resolver of the check running in this thread: pyspf looks names up through one
# module-level function, which reads it from here (each worker thread has its own context).
_resolver: contextvars.ContextVar[TXTResolver] = contextvars.ContextVar("spf_resolver")
# Until when every answer the check running in this thread read stays cached (time.time()).
_kept_until: contextvars.ContextVar[list[float]] = contextvars.ContextVar("spf_kept_until")


def _lookup(name: str, qtype: str, strict=True, timeout=None) -> list:
    """pyspf's DNSLookup: [((name, type), value), ...], raising its TempError for ours."""
    try:
        records, kept = _resolver.get().lookup(name, qtype)
    except DNSTemporaryError as exc:
        raise pyspf.TempError(str(exc)) from None
    until = _kept_until.get()
    until[0] = min(until[0], kept)
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
    key = (resolver.answers_from, client_address, mail_from, helo)
    reused = _results.get(key)
    if reused is not None:
        return reused
    identity = "mailfrom" if mail_from else "helo"
    sender = mail_from or helo
    domain = (mail_from.rpartition("@")[2] if mail_from else helo).lower().rstrip(".")
    if not domain or not is_domain(domain):
        return SPFResult("none", identity, domain, "no domain to check", sender)
    try:
        ipaddress.ip_address(client_address)
    except ValueError:
        return SPFResult("none", identity, domain, "no client address", sender)
    until = [math.inf]
    token, until_token = _resolver.set(resolver), _kept_until.set(until)
    try:
        query = pyspf.query(client_address, mail_from or "", helo or domain, timeout=max(resolver.remaining(), 0.1))
        result, _code, explanation = query.check()
    finally:
        _resolver.reset(token)
        _kept_until.reset(until_token)
    checked = SPFResult(result, identity, domain, explanation, sender)
    # A temperror is no answer to keep; a result with a lookup that pyspf swallowed lacks one.
    if result != "temperror" and not resolver.missed:
        _results.put(key, checked, until[0])
    return checked


_results = Reusable()


def check_helo(resolver: TXTResolver, client_address: str, helo: str) -> SPFResult:
    """RFC 7208 §2.3: the HELO identity on its own (recommended; DMARC uses the MAIL FROM result)."""
    return check_host(resolver, client_address, "", helo)


def is_domain(name: str) -> bool:
    """A dotted name, not an address literal: HELO may be either (RFC 5321 §4.1.1.1)."""
    if name.startswith("[") or "." not in name or ":" in name:
        return False
    if not name.rstrip(".").rpartition(".")[2].isdigit():
        return True  # an IPv4 address ends in digits; a top-level domain never is all digits
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False
