"""The outcome of every method for one message: our Authentication-Results (RFC 8601) and the verdict class."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailcore.authentication.arc import ARCResult
from mailcore.authentication.dkim import DKIMResult
from mailcore.authentication.dmarc import DMARCResult
from mailcore.authentication.spf import SPFResult

# The verdict classes (stored in Message.verification).
VERIFIED = "verified"  # x-source=pass, aligned (reverse-delivery.md §5)
AUTHENTICATED = "authenticated"  # dmarc=pass
UNVERIFIED = "unverified"
FAILED = "failed"  # a failed announcement, a downgrade, or dmarc=fail under p=reject

# What a property value may hold unquoted (RFC 8601 §2.2: a value, RFC 2045 token, or an addr-spec).
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~@]+")


def _value(text: str) -> str:
    if _TOKEN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    """An RFC 5322 comment: no unbalanced parentheses, no line breaks."""
    text = re.sub(r"[\r\n()\\]", " ", text).strip()
    return f" ({text[:200]})" if text else ""


@dataclass
class Authentication:
    """SPF, DKIM, DMARC and ARC results of one message (any may be missing when the checks are off)."""

    spf: SPFResult | None = None
    helo: SPFResult | None = None  # SPF for the HELO identity, when MAIL FROM was not null
    dkim: list[DKIMResult] = field(default_factory=list)
    dmarc: DMARCResult | None = None
    arc: ARCResult | None = None

    @property
    def dmarc_disposition(self) -> str:
        """none, quarantine or reject: what the From domain's owner asks for this message."""
        return self.dmarc.disposition if self.dmarc else "none"

    @property
    def authenticated(self) -> bool:
        return self.dmarc is not None and self.dmarc.result == "pass"

    def resinfo(self) -> list[str]:
        """Each method's `method=result properties (comment)`, in the order of RFC 8601 §2.7."""
        parts = []
        if self.spf is not None:
            parts.append(_spf(self.spf))
        if self.helo is not None:
            parts.append(_spf(self.helo))
        if self.dkim:
            for sig in self.dkim:
                parts.append(
                    f"dkim={sig.result} header.d={_value(sig.domain or 'none')} header.s={_value(sig.selector or 'none')}"
                    f" header.a={_value(sig.algorithm or 'none')} header.b={_value(sig.signature or 'none')}"
                    + _comment(sig.reason)
                )
        elif self.spf is not None:
            parts.append("dkim=none (no signature)")
        if self.dmarc is not None:
            d = self.dmarc
            comment = f"p={d.policy.upper()} dis={d.disposition.upper()}" if d.result in ("pass", "fail") else d.reason
            parts.append(f"dmarc={d.result} header.from={_value(d.header_from or 'none')}" + _comment(comment))
        if self.arc is not None:
            a = self.arc
            parts.append(f"arc={a.result}" + _comment(f"i={a.instances} as.d={a.sealer}" if a.instances else a.reason))
        return parts

    def methods(self) -> dict:
        """The results as data, for Message.auth_methods (what listings show without parsing headers)."""
        data: dict = {}
        if self.spf is not None:
            data["spf"] = {"result": self.spf.result, "domain": self.spf.domain, "identity": self.spf.identity}
        if self.helo is not None:
            data["spf_helo"] = {"result": self.helo.result, "domain": self.helo.domain}
        if self.dkim or self.spf is not None:
            data["dkim"] = [{"result": s.result, "d": s.domain, "s": s.selector, "a": s.algorithm} for s in self.dkim]
        if self.dmarc is not None:
            d = self.dmarc
            data["dmarc"] = {"result": d.result, "from": d.header_from, "policy": d.policy, "disposition": d.disposition}
        if self.arc is not None:
            data["arc"] = {"result": self.arc.result, "instances": self.arc.instances}
        return data


def _spf(result: SPFResult) -> str:
    line = f"spf={result.result} {result.property}={_value(result.sender or 'unknown')}"
    return line + _comment(result.explanation)


def summary(methods: dict) -> dict[str, str]:
    """method -> result (dkim: the best of its signatures), for a compact listing."""
    out: dict[str, str] = {}
    for name in ("spf", "dkim", "dmarc", "arc"):
        value = methods.get(name)
        if value is None:
            continue
        if name == "dkim":
            results = [s.get("result", "") for s in value]
            out[name] = "pass" if "pass" in results else (results[0] if results else "none")
        else:
            out[name] = value.get("result", "")
    return out


def summary_line(methods: dict) -> str:
    """`spf=pass dkim=none dmarc=fail arc=none`, or `-` for a message that was not checked."""
    return " ".join(f"{method}={result}" for method, result in summary(methods).items()) or "-"


def verdict(reverse_delivery: str, auth: Authentication | None) -> str:
    """The verdict class: reverse delivery's own verdict, raised to authenticated by DMARC or lowered to failed."""
    if reverse_delivery in (VERIFIED, FAILED):
        return reverse_delivery
    if auth is None:
        return reverse_delivery
    if auth.dmarc_disposition == "reject":
        return FAILED
    if auth.authenticated:
        return AUTHENTICATED
    return reverse_delivery
