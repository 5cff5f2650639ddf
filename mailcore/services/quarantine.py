"""The quarantine: held deliveries that an administrator or the mailbox owner releases or deletes,
and that the retention expires."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from mailcore.models import AuditAction, Delivery, DeliveryState
from mailcore.services import audit, queueing, quota
from mailcore.spam import learn

log = logging.getLogger("mailcore.quarantine")


class QuarantineError(Exception):
    pass


@dataclass
class BulkResult:
    """What a bulk action did: the ids it changed and those that were no longer held (harmless)."""

    done: list[int] = field(default_factory=list)
    not_held: list[int] = field(default_factory=list)


def held(mailbox=None):
    deliveries = Delivery.objects.filter(state=DeliveryState.QUARANTINED).select_related("message", "mailbox", "mailbox__domain")
    if mailbox is not None:
        deliveries = deliveries.filter(mailbox=mailbox)
    return deliveries.order_by("-delivered_at", "-id")


def _held_one(delivery_id: int, mailbox=None) -> Delivery:
    try:
        return held(mailbox).select_for_update(of=("self",)).get(pk=delivery_id)
    except (Delivery.DoesNotExist, ValueError):
        raise QuarantineError(f"no quarantined message {delivery_id}") from None


def _move(delivery_id: int, state: str, mailbox=None, action: str = "") -> Delivery:
    # select_for_update under the transaction: two concurrent releases (two admins, or an admin
    # and the owner) serialise here, and the second finds nothing held, so the message reaches
    # the inbox exactly once. The audit entry commits with the change, or not at all.
    with transaction.atomic():
        delivery = _held_one(delivery_id, mailbox)
        delivery.state = state
        delivery.save(update_fields=["state", "changed_at"])
        if state == DeliveryState.DELETED:
            quota.refund([(delivery.mailbox_id, delivery.message.size)])
        audit.record(action, audit.describe_delivery(delivery), mailbox=delivery.mailbox.address, detail=delivery.reason)
        # Reverse delivery §6, Forwarding: the message's copies for remote alias targets waited
        # for this decision: released, they go; once no copy is held any more, they never will.
        if state == DeliveryState.INBOX:
            queueing.release_forwards(delivery.message_id)
        elif not Delivery.objects.filter(message_id=delivery.message_id, state=DeliveryState.QUARANTINED).exists():
            queueing.drop_forwards(delivery.message_id)
    return delivery


def release(delivery_id: int, mailbox=None) -> Delivery:
    """Move a held delivery to the inbox, exactly once: a second release finds nothing held.

    Mail held as spam is then reported to spamd as ham (when spamd allows it to learn).
    """
    delivery = _move(delivery_id, DeliveryState.INBOX, mailbox, AuditAction.RELEASE)
    learn.after_release(delivery)
    return delivery


def delete(delivery_id: int, mailbox=None, as_spam: bool = False) -> Delivery:
    """Mark a held delivery deleted; the body stays while other deliveries or the trace need it.

    `as_spam`: the person deleting it says it is spam, and spamd is told so (when it learns).
    """
    delivery = _move(delivery_id, DeliveryState.DELETED, mailbox, AuditAction.DELETE_AS_SPAM if as_spam else AuditAction.DELETE)
    if as_spam:
        learn.report(delivery, "spam")
    return delivery


def _bulk(action, delivery_ids, mailbox=None) -> BulkResult:
    result = BulkResult()
    for delivery_id in delivery_ids:
        try:
            action(int(delivery_id), mailbox)
        except (QuarantineError, ValueError, TypeError):
            result.not_held.append(delivery_id)
        else:
            result.done.append(int(delivery_id))
    return result


def release_many(delivery_ids, mailbox=None) -> BulkResult:
    """Release each id that is still held (each in its own transaction); the rest are reported, not errors."""
    return _bulk(release, delivery_ids, mailbox)


def delete_many(delivery_ids, mailbox=None, as_spam: bool = False) -> BulkResult:
    if as_spam:
        return _bulk(lambda delivery_id, mailbox=None: delete(delivery_id, mailbox, as_spam=True), delivery_ids, mailbox)
    return _bulk(delete, delivery_ids, mailbox)


def expire_held(now=None) -> int:
    """Delete held mail older than MAIL_QUARANTINE_RETENTION_DAYS; each one is an entry in the audit log. Returns the count."""
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
            quota.refund([(delivery.mailbox_id, delivery.message.size)])
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

