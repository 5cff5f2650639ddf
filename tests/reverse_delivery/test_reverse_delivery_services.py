"""The services behind the sending role, in process: sourced records, retention expiry, the forwarded copy."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from mailcore.headers import strip_return_path
from mailcore.models import Delivery, Message, QueueItem, QueueState, SourcedMessage
from mailcore.services import accounts, inbound, queueing, reverse_delivery
from mailcore.store import message_store
from tests.dkim_support import unsigned

pytestmark = pytest.mark.django_db

CONTENT = b"From: Alice <alice@a.test>\r\nSubject: kept\r\nMessage-ID: <kept@a.test>\r\n\r\nHello.\r\n"


@pytest.fixture
def local(settings):
    settings.MAIL_HOSTNAME = "mx.a.test"
    settings.MAIL_SOURCE_RETENTION = 60
    accounts.add_domain("a.test")
    accounts.add_mailbox("alice@a.test", "alice-password")
    accounts.add_domain("b.test")
    accounts.add_mailbox("bob@b.test", "bob-password")


def queued_message(mail_from: str = "alice@a.test", rcpt: str = "dave@c.test") -> Message:
    body = message_store().put(CONTENT)
    message = Message.objects.create(
        body_ref=body.ref, size=body.size, sha256=body.sha256, mail_from=mail_from, rcpt_tos=[rcpt],
        transport="submission", verification="verified",
    )
    QueueItem.objects.create(message=message, recipient=rcpt, domain=rcpt.rpartition("@")[2])
    return message


def test_each_record_gets_a_fresh_128_bit_id_and_the_retention(local):
    message = queued_message()
    before = timezone.now()
    ids = {reverse_delivery.record_sourced(message.pk, "alice@a.test", ["dave@c.test"], "mx.c.test", message.size) for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    row = SourcedMessage.objects.get(source_id=ids.pop())
    assert (row.mail_from, row.rcpt_tos, row.destination_host, row.expired) == ("alice@a.test", ["dave@c.test"], "mx.c.test", False)
    assert before + timedelta(seconds=60) <= row.expires_at <= timezone.now() + timedelta(seconds=60)


def test_no_record_when_get_could_not_serve_the_outbound_octets(local):
    message = queued_message()
    # The outbound copy is smaller than the stored body (a Return-Path stripped at send time).
    assert reverse_delivery.record_sourced(message.pk, "alice@a.test", ["dave@c.test"], "mx.c.test", message.size - 5) is None
    assert reverse_delivery.record_sourced(10**9, "alice@a.test", ["dave@c.test"], "mx.c.test", 10) is None
    assert not SourcedMessage.objects.exists()


def test_withdrawn_id_is_unknown_to_get_and_never_notified(local):
    message = queued_message()
    source_id = reverse_delivery.record_sourced(message.pk, "alice@a.test", ["dave@c.test"], "mx.c.test", message.size)
    assert reverse_delivery.fetch_sourced(source_id, "192.0.2.1") is not None
    reverse_delivery.withdraw_sourced(source_id)
    assert reverse_delivery.fetch_sourced(source_id, "192.0.2.1") is None
    counts = reverse_delivery.expire_sourced(now=timezone.now() + timedelta(days=30))
    assert counts.ids == [] and not Delivery.objects.filter(mailbox__address="alice@a.test").exists()


def test_expiry_notifies_only_a_local_sender_once_and_releases_the_body(local):
    ours = queued_message()
    foreign = queued_message(mail_from="carol@elsewhere.test")
    ids = []
    for message in (ours, foreign):
        ids.append(reverse_delivery.record_sourced(message.pk, message.mail_from, ["dave@c.test"], "mx.c.test", message.size))
        QueueItem.objects.filter(message=message).update(state=QueueState.SOURCED)
    later = timezone.now() + timedelta(seconds=61)
    counts = reverse_delivery.expire_sourced(now=later)
    assert (counts.notified, counts.quiet, counts.released) == (2, 0, 2)
    # The notice goes to alice (ours) only: never to an address of another domain (spec §6).
    [notice] = Delivery.objects.filter(mailbox__address="alice@a.test")
    text = message_store().read(notice.message.body_ref)
    assert b"never collected it" in text and b"Final-Recipient: rfc822; dave@c.test" in text
    assert QueueItem.objects.filter(message__mail_from="carol@elsewhere.test").count() == 1  # no notice queued out
    assert set(Message.objects.filter(pk__in=[ours.pk, foreign.pk]).values_list("body_ref", flat=True)) == {""}
    # A second run finds nothing: no second notice.
    assert reverse_delivery.expire_sourced(now=later).ids == []
    assert Delivery.objects.filter(mailbox__address="alice@a.test").count() == 1


def test_fetched_expires_quietly_and_a_live_queue_item_keeps_the_body(local):
    message = queued_message()
    source_id = reverse_delivery.record_sourced(message.pk, "alice@a.test", ["dave@c.test"], "mx.c.test", message.size)
    reverse_delivery.fetch_sourced(source_id, "192.0.2.1")
    # The queue item is still deferred (say, for another attempt): the body must stay.
    QueueItem.objects.filter(message=message).update(state=QueueState.DEFERRED)
    counts = reverse_delivery.expire_sourced(now=timezone.now() + timedelta(seconds=61))
    assert (counts.notified, counts.quiet, counts.released) == (0, 1, 0)
    message.refresh_from_db()
    assert message.body_ref and message_store().exists(message.body_ref)
    assert not Delivery.objects.exists()


def test_forwarded_copy_is_re_sourced_under_our_own_domain(local, settings):
    settings.MAIL_HOSTNAME = "mx.b.test"
    accounts.add_alias("fwd@b.test", "alice@elsewhere.test")
    envelope = inbound.Envelope(mail_from="carol@c.test", rcpt_tos=["fwd@b.test"], client_address="192.0.2.7", helo_name="mx.c.test")
    receipt = inbound.receive(envelope, CONTENT)
    assert receipt.forwarded == ["alice@elsewhere.test"]
    [item] = QueueItem.objects.all()
    copy = item.message
    assert copy.pk != receipt.message.pk and copy.mail_from == "postmaster@b.test"
    stored = message_store().read(receipt.message.body_ref)
    forwarded = message_store().read(copy.body_ref)
    # Exactly what DATA would send, which is what GET serves: no Return-Path, our trace kept, and
    # on top the alias it was delivered to (the next hop's loop check).
    assert stored.startswith(b"Return-Path: <carol@c.test>\r\n")
    # Our ARC set (b.test's key: the alias's domain) and a DKIM signature (a.test, the From:, is
    # ours too) on top, then the alias's Delivered-To and exactly the stored copy.
    assert b"\r\nARC-Seal: i=1; cv=none; a=rsa-sha256; d=b.test;" in forwarded and forwarded.startswith(b"DKIM-Signature: ")
    assert unsigned(forwarded) == b"Delivered-To: fwd@b.test\r\n" + strip_return_path(stored) and b"Return-Path" not in forwarded
    assert copy.size == len(forwarded)


def test_forwarding_keeps_a_local_sender_and_a_null_reverse_path(local):
    accounts.add_alias("fwd@b.test", "dave@elsewhere.test")
    local_sender = queued_message(mail_from="alice@a.test", rcpt="fwd@b.test")
    bounce = queued_message(mail_from="", rcpt="fwd@b.test")
    assert queueing.forwarding_reverse_path(local_sender) == "alice@a.test"
    [item] = queueing.forward(bounce, ["dave@elsewhere.test"])
    assert item.message.mail_from == ""  # a bounce stays a bounce (RFC 5321 §4.5.5)
