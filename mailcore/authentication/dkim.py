"""DKIM (RFC 6376, RFC 8463 for Ed25519): the result of each signature of a message.

dkimpy is the maintained implementation (canonicalization, l=, key records, RSA and Ed25519, and
the same code signs our own mail); we give it our resolver and read why a signature failed, so
that a missing key is `permerror` and a DNS timeout `temperror` (RFC 8601 §2.7.1), not `fail`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import dkim as dkimpy
from dkim.util import parse_tag_value

from mailcore.authentication.resolver import DNSTemporaryError, TXTResolver

# dkimpy logs every failed signature at ERROR; a forged or broken signature is the peer's
# business, not our error log's.
_quiet = logging.getLogger("mailcore.authentication.dkimpy")
_quiet.setLevel(logging.CRITICAL)

# At most this many signatures of one message are checked: each costs a DNS lookup and a
# public-key operation, and a hostile sender could add hundreds.
MAX_SIGNATURES = 5


@dataclass(frozen=True)
class DKIMResult:
    result: str  # pass, fail, neutral, temperror, permerror (RFC 8601 §2.7.1)
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    signature: str = ""  # the first characters of b= (header.b, RFC 6008)
    reason: str = ""


class _KeyLookup:
    """dkimpy's dnsfunc over our resolver, remembering why a key could not be had."""

    def __init__(self, resolver: TXTResolver):
        self.resolver = resolver
        self.problem = ""  # "temperror" or "permerror" for the last lookup, else ""

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        self.problem = ""
        try:
            records = self.resolver.txt(name.decode("ascii").rstrip("."))
        except (DNSTemporaryError, UnicodeDecodeError) as exc:
            self.problem = "temperror"
            raise dkimpy.DnsTimeoutError(str(exc)) from None
        if not records:
            self.problem = "permerror"  # RFC 6376 §6.1.2: no key record
            return None
        return records[0]


def has_field(message: bytes, name: bytes) -> bool:
    """Whether the header section may hold a field `name` (lower case): a cheap test before parsing."""
    end = message.find(b"\r\n\r\n")
    return name in (message if end < 0 else message[:end]).lower()


def signatures(message: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature of `message`, topmost first (unparsable ones as {})."""
    if not has_field(message, b"dkim-signature:"):
        return []
    try:
        headers = dkimpy.DKIM(message).headers
    except dkimpy.DKIMException:  # no header section dkimpy can read: nothing to verify
        return []
    parsed = []
    for name, value in headers:
        if name.lower() == b"dkim-signature":
            try:
                parsed.append(parse_tag_value(value))
            except Exception:
                parsed.append({})
    return parsed


def verify(resolver: TXTResolver, message: bytes, start: Callable[..., Future] | None = None) -> list[DKIMResult]:
    """One result per DKIM-Signature (at most MAX_SIGNATURES); [] when the message has none.

    `start(fn, *args)` runs one signature's check and returns its future (a pool's submit, so
    that the signatures' key lookups are made at once); by default they run here, in turn.
    """
    tags = signatures(message)[:MAX_SIGNATURES]
    if start is None:
        return [_verify_one(resolver, message, index, sig) for index, sig in enumerate(tags)]
    checks = [start(_verify_one, resolver, message, index, sig) for index, sig in enumerate(tags)]
    return [check.result() for check in checks]


def _verify_one(resolver: TXTResolver, message: bytes, index: int, sig: dict[bytes, bytes]) -> DKIMResult:
    """The result of the signature at `index` (topmost 0), whose tags are `sig`."""
    domain = sig.get(b"d", b"").decode("ascii", "replace").lower()
    selector = sig.get(b"s", b"").decode("ascii", "replace")
    algorithm = sig.get(b"a", b"").decode("ascii", "replace")
    header_b = b"".join(sig.get(b"b", b"").split())[:8].decode("ascii", "replace")
    lookup = _KeyLookup(resolver)
    checker = dkimpy.DKIM(message, logger=_quiet, minkey=1024, timeout=max(resolver.remaining(), 0.1))
    reason = ""
    try:
        ok = checker.verify(idx=index, dnsfunc=lookup)
    except dkimpy.ValidationError as exc:
        ok, reason = False, str(exc)
    except dkimpy.DKIMException as exc:  # a malformed signature or key: RFC 8601 §2.7.1 permerror
        return DKIMResult("permerror", domain, selector, algorithm, header_b, str(exc))
    if ok:
        return DKIMResult("pass", domain, selector, algorithm, header_b)
    if lookup.problem:
        why = "DNS timeout or error" if lookup.problem == "temperror" else "no key published"
        return DKIMResult(lookup.problem, domain, selector, algorithm, header_b, why)
    if "body hash" in reason:
        reason = "body hash did not verify"
    return DKIMResult("fail", domain, selector, algorithm, header_b, reason or "signature did not verify")
