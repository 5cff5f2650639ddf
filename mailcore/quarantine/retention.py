"""Held mail is kept MAIL_QUARANTINE_RETENTION_DAYS days, then deleted by a schedule (and its digest links expire)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from mailcore.models import AuditAction, Delivery, DeliveryState
from mailcore.services import audit

log = logging.getLogger("mailcore.quarantine")


def expire_held(now=None) -> int:
    """Delete held mail older than the retention; each one is an entry in the audit log. Returns the count."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.MAIL_QUARANTINE_RETENTION_DAYS)
    expired = 0
    ids = list(
        Delivery.objects.filter(state=DeliveryState.QUARANTINED, delivered_at__lt=cutoff).values_list("pk", flat=True)[:10000]
    )
    for delivery_id in ids:
        with transaction.atomic():
            delivery = (
                Delivery.objects.select_for_update(of=("self",))
                .select_related("message", "mailbox")
                .filter(pk=delivery_id, state=DeliveryState.QUARANTINED)
                .first()
            )
            if delivery is None:  # released or deleted meanwhile
                continue
            delivery.state = DeliveryState.DELETED
            delivery.save(update_fields=["state", "changed_at"])
            audit.record(
                AuditAction.EXPIRE,
                audit.describe_delivery(delivery),
                mailbox=delivery.mailbox.address,
                detail=f"held since {delivery.delivered_at:%Y-%m-%d %H:%M}, retention {settings.MAIL_QUARANTINE_RETENTION_DAYS:g} days",
                actor=audit.SYSTEM,
            )
            expired += 1
    if expired:
        log.info("quarantine retention: %d held message(s) older than %g days deleted", expired, settings.MAIL_QUARANTINE_RETENTION_DAYS)
    return expired
