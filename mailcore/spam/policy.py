"""The spam verdict for one recipient: deliver, quarantine or reject, from the score and how mail arrived."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SpamAction(StrEnum):
    DELIVER = "deliver"
    QUARANTINE = "quarantine"
    REJECT = "reject"


@dataclass(frozen=True)
class Thresholds:
    """A domain's spam thresholds; the defaults are those of a new Domain."""

    verified: float = 8.0
    unverified: float = 3.0
    reject: float | None = None  # None: never refuse, only quarantine
    authenticated_as_verified: bool = True  # the domain's policy for DMARC-authenticated mail

    @classmethod
    def of_domain(cls, domain) -> Thresholds:
        return cls(
            verified=domain.spam_threshold_verified,
            unverified=domain.spam_threshold_unverified,
            reject=domain.spam_reject_score,
            authenticated_as_verified=domain.authenticated_policy == "verified",
        )

    def treats_as_verified(self, verification: str) -> bool:
        """Verified mail, and authenticated mail where the domain treats it as verified (the default)."""
        return verification == "verified" or (verification == "authenticated" and self.authenticated_as_verified)

    def quarantine_at(self, verified: bool) -> float:
        return self.verified if verified else self.unverified


def decide(score: float, verified: bool, thresholds: Thresholds) -> SpamAction:
    """The action for a message with this SpamAssassin score.

    "At or above" as in SpamAssassin's own `required_score`, so that an operator's 5.0 means what
    it means there. The reject score only turns a quarantine into a refusal: it never overrides
    the lenient threshold that a verified sender earned, so a verified message below its
    threshold is delivered whatever the reject score.
    """
    if score < thresholds.quarantine_at(verified):
        return SpamAction.DELIVER
    if thresholds.reject is not None and score >= thresholds.reject:
        return SpamAction.REJECT
    return SpamAction.QUARANTINE
