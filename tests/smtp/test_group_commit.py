"""Group commit: many bodies made durable in one round, many messages in one transaction."""

from __future__ import annotations

import smtplib

import pytest

from mailcore.models import Delivery, Mailbox, Message
from mailcore.services import inbound
from mailcore.services.accounts import add_domain, add_mailbox
from mailcore.store import message_store
from tests.smtp_wire import RawSMTP, send_from_many_clients
from tests.sockets import wait_until
from tests.store_support import files_under, record_stored


def test_put_many_stores_every_body_durably_and_in_order(mail_store):
    bodies = [f"Subject: {i}\r\n\r\n".encode() + bytes([i]) * (i * 1000) for i in range(20)]
    stored = message_store().put_many(bodies)
    assert [message_store().read(s.ref) for s in stored] == bodies
    assert [s.size for s in stored] == [len(b) for b in bodies]
    assert len({s.ref for s in stored}) == 20
    assert not [f for f in files_under(mail_store) if ".tmp-" in f]


def test_put_many_that_fails_keeps_nothing(mail_store, monkeypatch):
    message_store().put(b"already there")
    before = files_under(mail_store)
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError("disk gone")

    monkeypatch.setattr("mailcore.store.backends.os.fsync", failing_fsync)
    with pytest.raises(OSError):
        message_store().put_many([b"one", b"two", b"three", b"four"])
    assert files_under(mail_store) == before


@pytest.fixture
def mailboxes():
    add_domain("a.test")
    add_domain("strict.test", "reject")
    for address in ("bob@a.test", "carol@a.test", "s@strict.test"):
        add_mailbox(address, "pw")


@pytest.mark.django_db
def test_receive_many_answers_each_message_in_order(mail_store, mailboxes, monkeypatch):
    stored = record_stored(monkeypatch)
    items = [
        (inbound.Envelope(mail_from="x@else.test", rcpt_tos=["bob@a.test"]), b"Subject: first\r\n\r\n1\r\n", None),
        (inbound.Envelope(mail_from="x@else.test", rcpt_tos=["s@strict.test"]), b"Subject: refused\r\n\r\n2\r\n", None),
        (inbound.Envelope(mail_from="x@else.test", rcpt_tos=["carol@a.test", "bob@a.test"]), b"Subject: third\r\n\r\n3\r\n", None),
    ]
    first, refused, third = inbound.receive_many(items)
    assert isinstance(refused, inbound.PolicyRejection)
    assert first.delivered == ["bob@a.test"] and sorted(third.delivered) == ["bob@a.test", "carol@a.test"]
    assert sorted(Message.objects.values_list("subject", flat=True)) == ["first", "third"]
    assert Delivery.objects.count() == 3
    assert message_store().read(third.message.body_ref).endswith(b"Subject: third\r\n\r\n3\r\n")
    assert len(stored) == 2  # the refused message was never stored
    assert sorted(stored) == sorted(Message.objects.values_list("body_ref", flat=True))


@pytest.mark.django_db(transaction=True)
def test_one_message_the_database_refuses_does_not_fail_its_batch(mail_store, mailboxes, monkeypatch):
    from django.db import DatabaseError

    carol = Mailbox.objects.get(address="carol@a.test").pk
    real_insert = inbound.insert_rows
    inserts = []

    def insert(model, rows, **kwargs):
        if model is Delivery:
            inserts.append(len(rows))
            if any(row["mailbox_id"] == carol for row in rows):
                raise DatabaseError("constraint on carol")
        return real_insert(model, rows, **kwargs)

    monkeypatch.setattr("mailcore.services.inbound.insert_rows", insert)
    stored = record_stored(monkeypatch)
    items = [
        (inbound.Envelope(mail_from="x@else.test", rcpt_tos=[rcpt]), f"Subject: to {rcpt}\r\n\r\nhi\r\n".encode(), None)
        for rcpt in ("bob@a.test", "carol@a.test", "bob@a.test")
    ]
    outcomes = inbound.receive_many(items)
    assert inserts == [3, 1, 1, 1]  # the whole batch first, then one by one
    assert isinstance(outcomes[1], DatabaseError)
    assert [o.delivered for o in (outcomes[0], outcomes[2])] == [["bob@a.test"], ["bob@a.test"]]
    assert Message.objects.count() == 2
    # The refused message's body is gone; the others' stay, each referenced by its row.
    kept = set(Message.objects.values_list("body_ref", flat=True))
    assert len(stored) == 3 and len(kept) == 2 and kept <= set(stored)
    assert [message_store().exists(ref) for ref in stored] == [ref in kept for ref in stored]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("committers", ["1", "3"])  # one batch in flight (one trip), or several (stage, then commit)
def test_concurrent_sessions_are_all_stored_once(mx, b_test, committers):
    server = mx(MAIL_SMTP_COMMIT_BATCH="8", MAIL_SMTP_COMMITTERS=committers)
    assert send_from_many_clients(server.port, 20, 5, lambda tag: f"Subject: {tag}\r\n\r\nhello\r\n".encode(), timeout=30) == []
    subjects = list(Message.objects.values_list("subject", flat=True))
    assert sorted(subjects) == sorted(f"c{n}m{i}" for n in range(20) for i in range(5))
    assert Delivery.objects.filter(mailbox__address="bob@b.test").count() == 100


@pytest.mark.django_db(transaction=True)
def test_a_lone_session_is_stored_on_the_loop_and_concurrent_ones_by_workers(mx, b_test):
    server = mx(MAIL_LOG_LEVEL="DEBUG", MAIL_SMTP_PROCESSES="1")
    sent = []
    # The fixture's probe connection may still be counted for a moment after it closed: then the
    # session is not alone yet, and its message goes to a worker like any other.
    while "a lone message durable" not in server.output() and len(sent) < 20:
        sent.append(f"alone{len(sent)}")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
            c.sendmail("alice@remote.test", ["bob@b.test"], f"Subject: {sent[-1]}\r\n\r\nhello\r\n".encode())
    assert "a lone message durable" in server.output()
    by_workers = server.output().count(", in worker threads")
    # Another session open: the message goes to a worker thread, and the loop serves both.
    with RawSMTP(server.port) as other, smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
        assert other.greet()[-1].startswith(b"250 ")
        c.sendmail("alice@remote.test", ["bob@b.test"], b"Subject: together\r\n\r\nhello\r\n")
        assert other.cmd("NOOP").startswith(b"250 ")
    assert wait_until(lambda: server.output().count(", in worker threads") == by_workers + 1)
    assert sorted(Message.objects.values_list("subject", flat=True)) == sorted([*sent, "together"])
