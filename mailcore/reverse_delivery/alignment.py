"""Relaxed alignment of the visible From: with the verified reverse-path domain (spec §5.4, as DMARC)."""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from mailcore.addresses import domain_of

HEADER_LIMIT = 256 * 1024


def related(a: str, b: str) -> bool:
    """Equal, or one a subdomain of the other (spec §5.4)."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return bool(a) and bool(b) and (a == b or a.endswith("." + b) or b.endswith("." + a))


def header_from_domains(content: bytes) -> list[str]:
    """The domains of every address in every From: header of the message's header section."""
    head = content.split(b"\r\n\r\n", 1)[0][:HEADER_LIMIT]
    headers = BytesHeaderParser(policy=compat32).parsebytes(head)
    values = [str(v) for v in headers.get_all("From", [])]
    return [domain_of(address) for _name, address in getaddresses(values)]


def from_aligned(mail_from: str, content: bytes) -> tuple[bool, str]:
    """(aligned?, why not). A message without a From:, or with one of several From: headers
    (RFC 5322 §3.6 allows exactly one) or an author outside the domain, is not aligned."""
    envelope_domain = domain_of(mail_from)
    try:
        domains = header_from_domains(content)
    except Exception as exc:  # a header section we cannot parse proves no alignment
        return False, f"From: unreadable ({exc})"
    if not domains:
        return False, "no From: address"
    if len(domains) > 1 and len(set(domains)) > 1:
        return False, f"several From: domains ({', '.join(sorted(set(domains)))})"
    if not related(domains[0], envelope_domain):
        return False, f"From: domain {domains[0] or '(none)'} differs from {envelope_domain}"
    return True, ""
