"""The quarantine: held deliveries that an administrator or the mailbox owner releases or deletes."""

from __future__ import annotations

from django.db import transaction

from mailcore.models import Delivery, DeliveryState


class QuarantineError(Exception):
    pass


def held(mailbox=None):
    deliveries = Delivery.objects.filter(state=DeliveryState.QUARANTINED).select_related("message", "mailbox")
    if mailbox is not None:
        deliveries = deliveries.filter(mailbox=mailbox)
    return deliveries.order_by("-delivered_at")


def _held_one(delivery_id: int, mailbox=None) -> Delivery:
    try:
        return held(mailbox).select_for_update().get(pk=delivery_id)
    except (Delivery.DoesNotExist, ValueError):
        raise QuarantineError(f"no quarantined message {delivery_id}") from None


def release(delivery_id: int, mailbox=None) -> Delivery:
    """Move a held delivery to the inbox, exactly once: a second release finds nothing held."""
    with transaction.atomic():
        delivery = _held_one(delivery_id, mailbox)
        delivery.state = DeliveryState.INBOX
        delivery.save(update_fields=["state", "changed_at"])
    return delivery


def delete(delivery_id: int, mailbox=None) -> Delivery:
    with transaction.atomic():
        delivery = _held_one(delivery_id, mailbox)
        delivery.state = DeliveryState.DELETED
        delivery.save(update_fields=["state", "changed_at"])
    return delivery
