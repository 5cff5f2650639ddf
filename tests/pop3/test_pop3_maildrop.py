"""The maildrop service under POP3: the lock and its expiry, the one-query listing, UPDATE, body release."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mailcore.envelope import Transport, Verification
from mailcore.models import Delivery, DeliveryState, Mailbox, MailboxLock, Message
from mailcore.services import maildrop
from mailcore.store import message_store
from tests.factories import ADDRESS, deliver, make_mailbox
from tests.pop3_support import RawPop3, start_pop3

pytestmark = pytest.mark.django_db


@pytest.fixture
def mailbox_id():
    make_mailbox()
    return Mailbox.objects.get(address=ADDRESS).pk


def test_lock_is_exclusive_refreshable_and_lapses(mailbox_id):
    assert maildrop.acquire_lock(mailbox_id, "one", ttl=60)
    assert not maildrop.acquire_lock(mailbox_id, "two", ttl=60)
    assert maildrop.refresh_lock(mailbox_id, "one", ttl=0.2)
    assert not maildrop.refresh_lock(mailbox_id, "two", ttl=60)
    time.sleep(0.3)  # not a wait: the 0.2 s the lock was refreshed for run out, which is what is tested
    assert maildrop.acquire_lock(mailbox_id, "two", ttl=60)  # the first holder's lock lapsed
    assert not maildrop.refresh_lock(mailbox_id, "one", ttl=60)
    maildrop.release_lock(mailbox_id, "one")  # not the holder: nothing happens
    assert MailboxLock.objects.get().holder == "two"
    maildrop.release_lock(mailbox_id, "two")
    assert not MailboxLock.objects.exists()


def test_update_without_the_lock_deletes_nothing(mailbox_id):
    delivery = deliver(b"Subject: x\r\n\r\nx\r\n")
    with pytest.raises(maildrop.LockLost):
        maildrop.commit_update(mailbox_id, "nobody", [delivery.pk], [])
    assert Delivery.objects.get().state == DeliveryState.INBOX


def test_listing_counts_sizes_once_and_keeps_them(mailbox_id):
    delivery = deliver(b"Subject: lf\n\nbody\n")
    entries = maildrop.listing(mailbox_id)
    body = message_store().read(delivery.message.body_ref)
    assert [e.size for e in entries] == [len(body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))]
    assert entries[0].size == len(body) + 3  # three bare LFs, each sent as CRLF
    assert Message.objects.get().pop3_size == entries[0].size
    with CaptureQueriesContext(connection) as queries:
        assert maildrop.listing(mailbox_id) == entries
    assert len(queries) == 1


def test_ten_thousand_messages_list_from_one_query(mailbox_id):
    message = Message.objects.create(
        body_ref="shared.eml", size=100, pop3_size=100, sha256="0" * 64, transport=Transport.DATA,
        verification=Verification.UNVERIFIED,
    )
    # One stored message in many mailboxes is not what the model allows (one delivery per mailbox
    # and message), so 10,000 message rows, created in bulk.
    messages = Message.objects.bulk_create(
        Message(body_ref=f"m{i}.eml", size=100 + i % 7, pop3_size=100 + i % 7, sha256="0" * 64,
                queue_id=f"Q{i:08d}", transport=Transport.DATA, verification=Verification.UNVERIFIED)
        for i in range(10_000)
    )
    del message
    Delivery.objects.bulk_create(
        Delivery(message=m, mailbox_id=mailbox_id, uid=f"uid{i:06d}") for i, m in enumerate(messages)
    )
    with CaptureQueriesContext(connection) as queries:
        entries = maildrop.listing(mailbox_id)
    # One query whatever the mailbox size; its speed is for `make bench`, not a timed test.
    assert len(entries) == 10_000 and len(queries) == 1


@pytest.mark.django_db(transaction=True)
def test_ten_thousand_message_mailbox_over_the_wire(server_factory):
    make_mailbox()
    mailbox = Mailbox.objects.get(address=ADDRESS)
    messages = Message.objects.bulk_create(
        Message(body_ref=f"m{i}.eml", size=1000, pop3_size=1000, sha256="0" * 64, queue_id=f"W{i:08d}",
                transport=Transport.DATA, verification=Verification.UNVERIFIED)
        for i in range(10_000)
    )
    Delivery.objects.bulk_create(Delivery(message=m, mailbox=mailbox, uid=f"wire{i:06d}") for i, m in enumerate(messages))
    raw = RawPop3(start_pop3(server_factory))
    assert raw.login() == b"+OK alice@a.test has 10000 messages (10000000 octets)"
    for command in ("LIST", "UIDL"):
        raw.cmd(command)
        listing = raw.multiline().split(b"\r\n")[:-1]
        assert len(listing) == 10_000
    assert listing[-1] == b"10000 wire009999"
    assert raw.cmd("STAT") == b"+OK 10000 10000000"
    raw.cmd("QUIT")
