"""Putting messages on the outbound queue: what a submission queues, and the copies an alias forwards.

Below `inbound`, which forwards what it receives for an alias with a remote target; `outbound`
(submission, notifications, the queue runner's records) is above both.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from mailcore import jobs
from mailcore.addresses import domain_of
from mailcore.envelope import Envelope, message_row
from mailcore.headers import strip_return_path
from mailcore.models import Message, QueueItem, QueueState
from mailcore.models.message import new_queue_id
from mailcore.services import accounts, dkim_keys
from mailcore.store import message_store

log = logging.getLogger("mailcore.outbound")


def enqueue(message: Message, recipients: list[str]) -> list[QueueItem]:
    """Queue `message` for each remote recipient; delivery starts once the transaction commits."""
    items = QueueItem.objects.bulk_create(
        QueueItem(message=message, recipient=rcpt, domain=domain_of(rcpt)) for rcpt in recipients
    )
    for domain in {item.domain for item in items}:
        transaction.on_commit(lambda d=domain: _kick(d))
    return items


def _kick(domain: str) -> None:
    try:
        jobs.enqueue_delivery(domain)
    except Exception:  # the broker is down: the items are committed, and the queue's sweep sends them
        log.exception("could not enqueue the delivery to %s; the queue sweep will send it", domain)


# Why a forwarded copy waits in the queue: the message it copies is held (`release_forwards`).
HELD_WITH_MESSAGE = "held: forwarded once the message it copies is released from the quarantine"


def forward(message: Message, recipients: list[str], delivered_to: str = "", *, held: bool = False) -> list[QueueItem]:
    """An alias that points at a remote address: the message leaves again through the queue.

    Reverse delivery §6 "Forwarding": we source it again from our own store under our own domain
    in the reverse-path, so the next receiver pulls it back from us, who can answer for it. The
    queue gets its own copy: the envelope names `forwarding_reverse_path()`, and the body is
    exactly what DATA would send (our trace headers, without the Return-Path that only the final
    delivery carries, RFC 5321 §4.4), which is also what GET serves. A bounce (null reverse-path)
    stays one: it is forwarded from <> and by DATA, so it can never cause another bounce.
    `delivered_to`, the alias that forwards it, goes on top as `Delivered-To:`: a copy that comes
    back for that address is a loop (rejections.MailLoop).

    `held`: the message is held (quarantined by policy or as spam) for the alias: the copy waits
    in the queue, held, until the message is released (`release_forwards`), and is never sent if
    it is not (spec §6, Forwarding: only mail accepted for delivery is forwarded).
    """
    store = message_store()
    content = strip_return_path(store.read(message.body_ref))
    if delivered_to:
        content = f"Delivered-To: {delivered_to}\r\n".encode() + content
    ours = forwarding_reverse_path(message)
    # RFC 8617: our ARC set records what we verified before the message changed hands, then
    # our DKIM signature where the From: domain is ours.
    content = dkim_keys.sign(dkim_keys.seal(content, domain_of(ours)))
    body = store.put(content)
    envelope = Envelope(
        mail_from=ours if message.mail_from else "",
        rcpt_tos=recipients,
        client_address=message.client_address,
        helo_name=message.helo_name,
        tls=message.tls,
        transport=message.transport,
        verification=message.verification,
    )
    try:
        copy = Message.objects.create(
            **message_row(
                envelope,
                body,
                new_queue_id(),
                subject=message.subject,
                header_from=message.header_from,
                auth_results=message.auth_results,
                auth_methods=message.auth_methods,
                forwarded_from_id=message.pk,
            )
        )
        items = hold_items(copy, recipients) if held else enqueue(copy, recipients)
    except BaseException:
        store.delete(body.ref)
        raise
    log.info("%s forwarded as %s from <%s> to %s", message.queue_id, copy.queue_id, copy.mail_from, ", ".join(recipients))
    return items


def hold_items(message: Message, recipients: list[str]) -> list[QueueItem]:
    """Queue `message` for each recipient, held until `release_forwards` (no delivery is kicked)."""
    return QueueItem.objects.bulk_create(
        QueueItem(message=message, recipient=rcpt, domain=domain_of(rcpt), state=QueueState.HELD, last_reply=HELD_WITH_MESSAGE)
        for rcpt in recipients
    )


def _held_forwards(message_id: int):
    return QueueItem.objects.filter(
        message__forwarded_from_id=message_id, state=QueueState.HELD, last_reply=HELD_WITH_MESSAGE
    )


def release_forwards(message_id: int) -> int:
    """The message was released from the quarantine: its held forwarded copies go now (in the caller's transaction)."""
    items = list(_held_forwards(message_id).select_related("message"))
    now = timezone.now()
    for item in items:
        QueueItem.objects.filter(pk=item.pk, state=QueueState.HELD).update(
            state=QueueState.QUEUED, next_attempt_at=now, last_reply="", updated_at=now
        )
    for domain in {item.domain for item in items}:
        transaction.on_commit(lambda d=domain: _kick(d))
    if items:
        log.info("%s released: forwarded to %s", items[0].message.queue_id, ", ".join(i.recipient for i in items))
    return len(items)


def drop_forwards(message_id: int) -> int:
    """The message will never be released (its last held copy was deleted): nor are its forwarded copies."""
    deleted, _ = _held_forwards(message_id).delete()
    return deleted


def forwarding_reverse_path(message: Message) -> str:
    """The reverse-path of a forwarded copy: the sender's own when it is ours, else postmaster of the alias's domain.

    Spec §6 asks only for "its own domain". The postmaster of the aliased recipient's domain is
    chosen because it exists at every domain we serve (RFC 5321 §4.5.1), its domain's MX is us
    (so the next receiver's GET comes back here), and a bounce from the forwarding target reaches
    the administrator who can fix the alias, rather than the original sender, whom a DATA sender
    may have forged (no backscatter, spec §6). An SRS address that routes bounces back to the
    original sender would need the MX to accept and decode it.
    """
    if accounts.is_local_domain(domain_of(message.mail_from)):
        # Already our own domain (a local user's mail to a forwarding alias): we answer for it as
        # it is, and a bounce reaches the real sender.
        return message.mail_from
    for rcpt in message.rcpt_tos:
        domain = domain_of(rcpt)
        if accounts.is_local_domain(domain):
            return f"postmaster@{domain}"
    return f"postmaster@{settings.MAIL_HOSTNAME}"
