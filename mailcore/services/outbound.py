"""The outbound queue: putting remote recipients on it and kicking their delivery."""

from __future__ import annotations

from django.db import transaction

from mailcore.addresses import domain_of
from mailcore.models import Message, QueueItem


def enqueue(message: Message, recipients: list[str]) -> list[QueueItem]:
    """Queue `message` for each remote recipient; delivery starts once the transaction commits."""
    items = QueueItem.objects.bulk_create(
        QueueItem(message=message, recipient=rcpt, domain=domain_of(rcpt)) for rcpt in recipients
    )
    for domain in {item.domain for item in items}:
        transaction.on_commit(lambda d=domain: _kick(d))
    return items


def forward(message: Message, recipients: list[str]) -> list[QueueItem]:
    """An alias that points at a remote address: the message leaves again through the queue.

    Reverse delivery §6 "Forwarding": it is re-sourced from our own store under our own domain by
    the sending role of the delivery client.
    """
    return enqueue(message, recipients)


def _kick(domain: str) -> None:
    from mailcore import tasks

    tasks.enqueue_delivery(domain)
