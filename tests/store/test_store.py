"""The durable body store: what is put comes back identical; a failed write leaves nothing."""

from __future__ import annotations

import pytest

from mailcore.models import Delivery, Message
from mailcore.services import inbound
from mailcore.services.accounts import add_domain, add_mailbox
from mailcore.store import message_store
from tests.store_support import files_under, record_stored


def test_put_bytes_reads_back_identical(mail_store):
    body = b"Subject: hi\r\n\r\n" + bytes(range(256)) * 1000
    stored = message_store().put(body)
    assert message_store().read(stored.ref) == body
    assert stored.size == len(body)
    assert b"".join(message_store().iter_chunks(stored.ref, 1000)) == body
    assert not [f for f in files_under(mail_store) if ".tmp-" in f]


def test_put_chunks_streams_and_hashes(mail_store):
    import hashlib

    chunks = [b"a" * 70000, b"b" * 3, b"c" * 100000]
    stored = message_store().put(iter(chunks))
    assert stored.size == 170003
    assert stored.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert message_store().read(stored.ref) == b"".join(chunks)


def test_failed_write_leaves_no_file(mail_store):
    def broken():
        yield b"half a body"
        raise OSError("disk gone")

    with pytest.raises(OSError):
        message_store().put(broken())
    assert files_under(mail_store) == []


def test_delete(mail_store):
    stored = message_store().put(b"x")
    message_store().delete(stored.ref)
    assert not message_store().exists(stored.ref)


@pytest.mark.django_db
def test_failed_commit_leaves_no_row_and_no_body(mail_store, monkeypatch):
    add_domain("a.test")
    add_mailbox("bob@a.test", "pw")

    real_insert = inbound.insert_rows

    def fail(model, rows, **kwargs):
        if model is Delivery:  # after the Message row: the transaction must undo it
            raise RuntimeError("database gone")
        return real_insert(model, rows, **kwargs)

    monkeypatch.setattr("mailcore.services.inbound.insert_rows", fail)
    stored = record_stored(monkeypatch)
    envelope = inbound.Envelope(mail_from="x@else.test", rcpt_tos=["bob@a.test"])
    with pytest.raises(RuntimeError):
        inbound.receive(envelope, b"Subject: x\r\n\r\nbody\r\n")
    assert not Message.objects.exists()
    assert len(stored) == 1 and not message_store().exists(stored[0])


@pytest.mark.django_db
def test_receive_stores_once_for_many_recipients(mail_store, settings, monkeypatch):
    stored = record_stored(monkeypatch)
    add_domain("a.test")
    add_mailbox("bob@a.test", "pw")
    add_mailbox("carol@a.test", "pw")
    envelope = inbound.Envelope(mail_from="x@else.test", rcpt_tos=["bob@a.test", "carol@a.test"], client_address="192.0.2.1")
    receipt = inbound.receive(envelope, b"Subject: x\r\n\r\nbody\r\n")
    assert sorted(receipt.delivered) == ["bob@a.test", "carol@a.test"]
    assert stored == [receipt.message.body_ref]
    body = message_store().read(receipt.message.body_ref)
    assert body.startswith(b"Return-Path: <x@else.test>\r\nAuthentication-Results: " + settings.MAIL_HOSTNAME.encode())
    assert b"x-source=none smtp.mailfrom=x@else.test" in body
    assert body.endswith(b"Subject: x\r\n\r\nbody\r\n")
