"""ARC (RFC 8617): whether the chain of intermediaries' seals on a message holds.

dkimpy verifies and signs ARC sets with the same canonicalization code as DKIM; we give it our
resolver. The result is the chain validation status: pass, fail or none (RFC 8617 §4.4.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import dkim as dkimpy

from mailcore.authentication.dkim import _KeyLookup, _quiet, has_field
from mailcore.authentication.resolver import TXTResolver


@dataclass(frozen=True)
class ARCResult:
    result: str  # pass, fail, none (RFC 8617 §4.4.1), or temperror when a key lookup timed out
    instances: int = 0  # the highest i= of the chain
    sealer: str = ""  # d= of the newest ARC-Seal
    reason: str = ""


def verify(resolver: TXTResolver, message: bytes) -> ARCResult:
    if not has_field(message, b"arc-seal:"):
        return ARCResult("none", reason="no ARC set")
    lookup = _KeyLookup(resolver)
    try:
        cv, results, reason = dkimpy.arc_verify(message, logger=_quiet, dnsfunc=lookup, timeout=max(resolver.remaining(), 0.1))
    except dkimpy.DKIMException as exc:
        return ARCResult("fail", reason=str(exc))
    except Exception as exc:  # dkimpy on a malformed chain: a failed chain, never a lost message
        return ARCResult("fail", reason=f"unreadable ARC set: {exc}")
    if cv == dkimpy.CV_None:
        return ARCResult("none", reason=reason)
    instances = max((r.get("instance", 0) for r in results), default=0)
    newest = next((r for r in results if r.get("instance") == instances), {})
    sealer = newest.get("as-domain", b"").decode("ascii", "replace")
    if cv == dkimpy.CV_Pass:
        return ARCResult("pass", instances, sealer, reason)
    if lookup.problem == "temperror":
        return ARCResult("temperror", instances, sealer, "DNS timeout or error")
    return ARCResult("fail", instances, sealer, reason)
