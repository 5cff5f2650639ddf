"""The downgrade memory (reverse-delivery.md §5.8): sender domains seen delivering by SOURCE.

A domain is remembered each time a body is pulled back from its MX for the envelope it was
announced with; plain DATA mail that later claims such a domain, or one of our own domains from
outside, is a likely forgery by downgrade (`downgrade_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from mailcore.addresses import domain_of
from mailcore.models import SourcePin


def _horizon(now: datetime | None = None) -> datetime | None:
    """Pins verified before this are forgotten; None: the memory is off (MAIL_SOURCE_PIN_DAYS=0)."""
    if settings.MAIL_SOURCE_PIN_DAYS <= 0:
        return None
    return (now or timezone.now()) - timedelta(days=settings.MAIL_SOURCE_PIN_DAYS)


def remember(domain: str, now: datetime | None = None) -> None:
    """A message from `domain` was just verified by SOURCE (call inside the pull's transaction)."""
    domain = domain.lower().rstrip(".")
    if not domain or settings.MAIL_SOURCE_PIN_DAYS <= 0:
        return
    now = now or timezone.now()
    if not SourcePin.objects.filter(domain=domain).update(last_verified_at=now, verified_count=F("verified_count") + 1):
        SourcePin.objects.create(domain=domain, last_verified_at=now, verified_count=1)


def is_pinned(domain: str, now: datetime | None = None) -> bool:
    horizon = _horizon(now)
    if horizon is None or not domain:
        return False
    return SourcePin.objects.filter(domain=domain.lower().rstrip("."), last_verified_at__gte=horizon).exists()


@dataclass(frozen=True)
class Pin:
    domain: str
    last_verified_at: datetime
    first_verified_at: datetime
    verified_count: int
    expires_at: datetime


def listing(now: datetime | None = None) -> list[Pin]:
    """The domains remembered now, by name (`callbacks pins`)."""
    horizon = _horizon(now)
    if horizon is None:
        return []
    keep = timedelta(days=settings.MAIL_SOURCE_PIN_DAYS)
    return [
        Pin(p.domain, p.last_verified_at, p.first_verified_at, p.verified_count, p.last_verified_at + keep)
        for p in SourcePin.objects.filter(last_verified_at__gte=horizon).order_by("domain")
    ]


def forget(domain: str) -> bool:
    """Forget one domain: its DATA mail is plain unverified again. False when it was not remembered."""
    deleted, _ = SourcePin.objects.filter(domain=domain.lower().rstrip(".")).delete()
    return bool(deleted)


def downgrade_reason(mail_from: str, *, pinned: bool, local: bool) -> str | None:
    """The Authentication-Results comment for DATA mail that is a downgrade; None when it is not.

    `pinned`: the reverse-path's domain is remembered; `local`: it is one of our own domains,
    whose users submit with AUTH (spec §6, "Own domains from outside").
    """
    domain = domain_of(mail_from) if mail_from else ""
    if not domain:
        return None  # a bounce has no domain to deliver by SOURCE
    if local:
        return f"{domain} is a domain of this server: its mail never comes by DATA from outside"
    if pinned:
        return f"{domain} delivers by SOURCE: plain DATA from it is a likely forgery"
    return None
