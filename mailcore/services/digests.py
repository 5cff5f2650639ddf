"""What the quarantine digests need of the database: who has newly held mail, and what each digest listed."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from mailcore.models import Delivery, DeliveryState, Mailbox, QuarantineDigest
from mailcore.services import outbound


def mailboxes_with_new_held_mail():
    """(mailbox, its QuarantineDigest or None) of each mailbox with mail held since its last digest."""
    newest = dict(
        Delivery.objects.filter(state=DeliveryState.QUARANTINED, mailbox__active=True, mailbox__domain__active=True)
        .values_list("mailbox")
        .annotate(Max("id"))
    )
    states = {s.mailbox_id: s for s in QuarantineDigest.objects.filter(mailbox_id__in=newest)}
    for mailbox in Mailbox.objects.filter(pk__in=newest).select_related("domain"):
        state = states.get(mailbox.pk)
        if newest[mailbox.pk] > (state.last_held_id if state else 0):
            yield mailbox, state


def send_digest(mailbox: Mailbox, content: bytes, newest_id: int) -> None:
    """Queue the digest `content` to `mailbox` and remember the newest held delivery it lists, together."""
    with transaction.atomic():
        outbound.notify(mailbox.address, content, about="quarantine digest")
        QuarantineDigest.objects.update_or_create(mailbox=mailbox, defaults={"last_sent_at": timezone.now(), "last_held_id": newest_id})
