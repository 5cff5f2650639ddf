"""DMARC (RFC 7489): the From: domain's policy, and whether SPF or DKIM passed for an aligned domain.

The record lookup and alignment are a few lines over our resolver; the organizational domain
needs the Public Suffix List, which `publicsuffixlist` ships inside the package (no download at
run time, updated with each release).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from mailcore.authentication.dkim import DKIMResult
from mailcore.authentication.resolver import DNSTemporaryError, Reusable, TXTResolver
from mailcore.authentication.spf import SPFResult


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (the domain itself when the list knows no more)."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(one: str, other: str, strict: bool) -> bool:
    """RFC 7489 §3.1: identical domains (strict), or the same organizational domain (relaxed)."""
    one, other = one.lower().rstrip("."), other.lower().rstrip(".")
    if not one or not other:
        return False
    if strict:
        return one == other
    return organizational_domain(one) == organizational_domain(other)


@dataclass(frozen=True)
class DMARCRecord:
    domain: str  # where it was found: the From domain or its organizational domain
    policy: str  # p= (or sp= for a subdomain found at the organizational domain)
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    rua: str = ""


def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record (RFC 7489 §6.3), or None when it is not one (v=DMARC1 first)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if not sep:
            if part.strip():
                return None if not tags else tags  # junk after a valid start is ignored (§6.3)
            continue
        tags.setdefault(name.strip().lower(), value.strip())
    if list(tags)[:1] != ["v"] or tags["v"] != "DMARC1":
        return None
    return tags


def find_record(resolver: TXTResolver, from_domain: str) -> DMARCRecord | None:
    """RFC 7489 §6.6.3: `_dmarc.<From domain>`, else `_dmarc.<organizational domain>`; raises DNSTemporaryError.

    The record found (or its absence) is reused while the answers it came from are cached.
    """
    from_domain = from_domain.lower().rstrip(".")
    key = (resolver.answers_from, from_domain)
    reused = _records.get(key)
    if reused is not None:
        return reused[0]
    kept = [math.inf]
    record = _find_record(resolver, from_domain, kept)
    if not resolver.missed:
        _records.put(key, (record,), kept[0])
    return record


_records = Reusable()


def _find_record(resolver: TXTResolver, from_domain: str, kept: list[float]) -> DMARCRecord | None:
    org = organizational_domain(from_domain)
    for domain in dict.fromkeys([from_domain, org]):
        answer, until = resolver.lookup(f"_dmarc.{domain}", "TXT")
        kept[0] = min(kept[0], until)
        texts = [b"".join(r.strings) for r in answer]
        found = [parse_record(t.decode("utf-8", "replace")) for t in texts]
        found = [tags for tags in found if tags is not None]
        if len(found) != 1:  # none, or several: as if none (§6.6.3 step 3)
            continue
        tags = found[0]
        policy = tags.get("p", "").lower()
        if domain != from_domain and "sp" in tags:
            policy = tags["sp"].lower()
        if policy not in ("none", "quarantine", "reject"):
            if "rua" not in tags:
                continue  # §6.6.3 step 6: no valid p= and no rua: no record
            policy = "none"
        try:
            pct = max(0, min(100, int(tags.get("pct", "100"))))
        except ValueError:
            pct = 100
        return DMARCRecord(
            domain=domain,
            policy=policy,
            adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
            aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
            pct=pct,
            rua=tags.get("rua", ""),
        )
    return None


# RFC 7489 §6.6.4: a failing message that pct= leaves out gets the next weaker policy.
WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def applies(record: DMARCRecord, sample: Callable[[], float] = random.random) -> bool:
    """Whether p= applies to one failing message: to pct percent of them (§6.6.4).

    `sample` draws from [0, 1): a message is in the pct percent when it draws below pct/100.
    """
    return record.pct >= 100 or sample() * 100 < record.pct


@dataclass(frozen=True)
class DMARCResult:
    result: str  # pass, fail, none, temperror, permerror (RFC 7489 §11.2)
    header_from: str  # the From: domain
    policy: str = "none"  # the published policy that applies: none, quarantine, reject
    reason: str = ""
    sampled_out: bool = False  # a failure that pct= leaves out of the policy (§6.6.4)

    @property
    def disposition(self) -> str:
        """What the domain owner asks of this message (§6.6.4): none, quarantine or reject."""
        if self.result != "fail":
            return "none"
        return WEAKER[self.policy] if self.sampled_out else self.policy


def has_from_domain(from_domain: str) -> bool:
    """Whether there is a From domain whose DMARC record could be looked up."""
    return bool(from_domain) and "." in from_domain.rstrip(".")


def evaluate(
    resolver: TXTResolver | None,
    from_domain: str,
    spf: SPFResult | None,
    dkim: list[DKIMResult],
    found: Callable[[], DMARCRecord | None] | None = None,
    sample: Callable[[], float] = random.random,
) -> DMARCResult:
    """RFC 7489 §4.2: pass when SPF (for MAIL FROM) or any DKIM signature passed for an aligned domain.

    `found` gives the record when it was looked up already (a future's result, raising
    DNSTemporaryError as find_record does); by default it is looked up here, with `resolver`.
    """
    from_domain = from_domain.lower().rstrip(".")
    if not has_from_domain(from_domain):
        return DMARCResult("none", from_domain, reason="no From domain")
    try:
        record = found() if found is not None else find_record(resolver, from_domain)
    except DNSTemporaryError as exc:
        return DMARCResult("temperror", from_domain, reason=str(exc))
    if record is None:
        return DMARCResult("none", from_domain, reason="no DMARC record")
    for sig in dkim:
        if sig.result == "pass" and aligned(sig.domain, from_domain, record.adkim == "s"):
            return DMARCResult("pass", from_domain, record.policy, f"DKIM aligned ({sig.domain})")
    if spf is not None and spf.identity == "mailfrom" and spf.result == "pass" and aligned(spf.domain, from_domain, record.aspf == "s"):
        return DMARCResult("pass", from_domain, record.policy, f"SPF aligned ({spf.domain})")
    reason = "neither SPF nor DKIM passed for an aligned domain"
    sampled_out = not applies(record, sample)
    if sampled_out:
        reason += f"; left out by pct={record.pct}"
    return DMARCResult("fail", from_domain, record.policy, reason, sampled_out)
