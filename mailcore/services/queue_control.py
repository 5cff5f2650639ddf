"""Operator actions on the outbound queue: retry now, hold, delete (the web UI's queue buttons)."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from mailcore import jobs
from mailcore.models import ACTIVE_STATES, QueueItem, QueueState


def _active(item_ids):
    return QueueItem.objects.select_for_update().filter(pk__in=list(item_ids), state__in=ACTIVE_STATES)


def retry_now(item_ids) -> int:
    """Make the items due now (held ones are released too) and ask the delivery engine to run."""
    with transaction.atomic():
        items = list(_active(item_ids))
        now = timezone.now()
        for item in items:
            item.state = QueueState.QUEUED
            item.next_attempt_at = now
            item.save(update_fields=["state", "next_attempt_at", "updated_at"])
        for domain in {item.domain for item in items}:
            transaction.on_commit(lambda d=domain: jobs.enqueue_delivery(d))
    return len(items)


def hold(item_ids) -> int:
    """Stop trying these items until someone retries them (Postfix's `postsuper -h`)."""
    with transaction.atomic():
        items = list(_active(item_ids).exclude(state=QueueState.HELD))
        for item in items:
            item.state = QueueState.HELD
            item.save(update_fields=["state", "updated_at"])
    return len(items)


def delete(item_ids) -> int:
    """Drop items from the queue without a bounce (Postfix's `postsuper -d`); the stored message stays
    for the trace and any other recipient."""
    with transaction.atomic():
        deleted, _ = QueueItem.objects.filter(pk__in=list(item_ids), state__in=ACTIVE_STATES).delete()
    return deleted
