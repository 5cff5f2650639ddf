"""Per-domain spam thresholds: reading them for the spam check, and changing them for the operator."""

from __future__ import annotations

import math

from django.db import transaction

from mailcore.addresses import domain_of
from mailcore.models import AuditAction, Domain
from mailcore.services import audit
from mailcore.services.accounts import AccountError, get_domain, list_domains
from mailcore.spam.check import normalized
from mailcore.spam.policy import Thresholds

# `reject=KEEP` leaves the reject score as it is; None switches refusing off.
KEEP = object()


def recipient_thresholds(recipients: list[str]) -> dict[str, Thresholds]:
    """Each recipient's spam thresholds, by normalized address: its domain's, or a new domain's defaults."""
    recipients = [normalized(rcpt) for rcpt in recipients]
    names = {domain_of(rcpt) for rcpt in recipients}
    by_name = {d.name: Thresholds.of_domain(d) for d in Domain.objects.filter(name__in=names)}
    return {rcpt: by_name.get(domain_of(rcpt), Thresholds()) for rcpt in recipients}


def _score(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise AccountError(f"{what} must be a finite number, not {value}")
    return value


def set_thresholds(name: str, *, verified: float | None = None, unverified: float | None = None, reject=KEEP) -> Domain:
    domain = get_domain(name)
    if verified is not None:
        domain.spam_threshold_verified = _score(verified, "the verified threshold")
    if unverified is not None:
        domain.spam_threshold_unverified = _score(unverified, "the unverified threshold")
    if reject is not KEEP:
        domain.spam_reject_score = None if reject is None else _score(reject, "the reject score")
    with transaction.atomic():
        domain.save(update_fields=["spam_threshold_verified", "spam_threshold_unverified", "spam_reject_score"])
        audit.record(AuditAction.POLICY, f"domain {domain.name}", detail=describe(domain).partition("\t")[2].replace("\t", " "))
    return domain


def thresholds_of(name: str | None = None) -> list[Domain]:
    return [get_domain(name)] if name else list(list_domains())


def describe(domain: Domain) -> str:
    reject = "off" if domain.spam_reject_score is None else f"{domain.spam_reject_score:g}"
    return (
        f"{domain.name}\tverified={domain.spam_threshold_verified:g}"
        f"\tunverified={domain.spam_threshold_unverified:g}\treject={reject}"
    )
