"""The inbound path's own row writing and header scan agree with what the ORM and email.parser give."""

from __future__ import annotations

import random
from email.parser import BytesHeaderParser
from email.utils import parseaddr

import pytest

from mailcore import headers
from mailcore.models import Delivery, DeliveryState, Message
from mailcore.services import inbound
from mailcore.services.accounts import add_alias, add_domain, add_mailbox
from mailcore.store import message_store


def parsed_summary(content: bytes) -> tuple[str, str]:
    """What summary_headers answered before its scan: email.parser on the whole header block."""
    head = content.split(b"\r\n\r\n", 1)[0][:65536]
    parsed = BytesHeaderParser().parsebytes(head)
    return str(parsed.get("Subject", ""))[:255], parseaddr(str(parsed.get("From", "")))[1][:320]


PIECES = [
    b"Subject: hello", b"subject:x", b"SUBJECT:   spaced  ", b"Subject:", b"Subject: \t", b"From: a@b.test",
    b"from: Name <n@x.test>", b"From: \"Q, R\" <q@r.test> (c)", b"From: bad <<", b"X-From: x@y.test", b"Subject : no",
    b"\tfolded part", b" more", b"From envelope line", b"garbage line", b":empty name", b"", b"To: t@x.test",
    b"Subject: caf\xc3\xa9", b"From: \xff@x.test", b"Subject: =?utf-8?q?caf=C3=A9?=", b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
]
ENDS = [b"\r\n"] * 12 + [b"\n", b"\r"]


@pytest.mark.parametrize("seed", range(400))
def test_summary_scan_agrees_with_the_parser(seed):
    rng = random.Random(seed)
    content = b"".join(rng.choice(PIECES) + rng.choice(ENDS) for _ in range(rng.randint(0, 8)))
    content += rng.choice([b"\r\nbody\r\n", b"", b"\r\n", b"tail"])
    assert headers.summary_headers(content) == parsed_summary(content)


def test_summary_of_a_long_header_block_is_cut_where_it_was():
    for filler in (65536 - 20, 65536 - 9, 65536, 70000):
        content = b"X-Pad: " + b"p" * filler + b"\r\nSubject: late\r\nFrom: f@x.test\r\n\r\nbody"
        assert headers.summary_headers(content) == parsed_summary(content)
    content = b"Subject: " + b"s" * 300 + b"\r\nFrom: " + b"l" * 400 + b"@x.test\r\n\r\n"
    assert headers.summary_headers(content) == parsed_summary(content) == ("s" * 255, "l" * 320)


FROMS = [
    "Alice <alice@example.org>", "alice@example.org", "<a.b@x-y.z>", "O'Brien  <ob@x.io> \t", "Name<a@b>", "a@b.c.",
    ".a@b", "a..b@c", "a@b..c", "a@-b", "\"Q, R\" <q@r.test>", "x@y (comment)", "a@b, c@d", "<@route:a@b>", "Ann\t<a@b>",
]


@pytest.mark.parametrize("seed", range(200))
def test_from_address_agrees_with_parseaddr(seed):
    rng = random.Random(seed)
    value = list(rng.choice(FROMS))
    for _ in range(rng.randint(0, 3)):  # an edit: insert, delete or replace a character
        at = rng.randrange(len(value) + 1)
        edit, char = rng.randrange(3), rng.choice("aZ09.-@<> \t\"',;:()[]\\!#%_~")
        if edit == 0:
            value.insert(at, char)
        elif value:
            value[min(at, len(value) - 1) : min(at, len(value) - 1) + 1] = [char] if edit == 1 else []
    value = "".join(value)
    assert headers.from_address(value) == parseaddr(value)[1], value


@pytest.fixture
def mailboxes():
    add_domain("a.test")
    add_domain("held.test", "quarantine")
    for address in ("bob@a.test", "carol@a.test", "h@held.test"):
        add_mailbox(address, "pw")


@pytest.mark.django_db
def test_rows_are_what_the_orm_reads_back(mail_store, mailboxes):
    envelope = inbound.Envelope(
        mail_from="x@else.test", rcpt_tos=["bob@a.test", "h@held.test", "carol@a.test"], client_address="192.0.2.7",
        helo_name="mx.else.test", tls=True,
    )
    content = b"Subject: rows\r\nFrom: Sender <x@else.test>\r\n\r\nbody\r\n"
    [receipt] = inbound.receive_many([(envelope, content, None)])
    message = Message.objects.get(pk=receipt.message_id)
    assert (message.queue_id, message.subject, message.header_from) == (receipt.queue_id, "rows", "x@else.test")
    assert message.rcpt_tos == ["bob@a.test", "h@held.test", "carol@a.test"] and message.spam_rules == []
    assert message.tls is True and message.pop3_size is None and message.spam_score is None
    assert message.received_at is not None
    stored = message_store().read(message.body_ref)
    assert stored.endswith(content) and len(stored) == message.size
    assert message.auth_results in stored.decode()
    # The lazily built instance is the row.
    lazy = receipt.message
    assert lazy.pk == message.pk and not lazy._state.adding
    for f in Message._meta.concrete_fields:
        assert getattr(lazy, f.attname) == getattr(message, f.attname), f.attname
    deliveries = {d.mailbox.address: d for d in Delivery.objects.filter(message=message)}
    assert {a: (d.state, d.reason) for a, d in deliveries.items()} == {
        "bob@a.test": (DeliveryState.INBOX, ""),
        "carol@a.test": (DeliveryState.INBOX, ""),
        "h@held.test": (DeliveryState.QUARANTINED, "unverified"),
    }
    assert len({d.uid for d in deliveries.values()}) == 3
    assert all(d.delivered_at == message.received_at and d.retrieved_at is None for d in deliveries.values())


@pytest.mark.django_db
def test_a_batch_larger_than_one_statement_keeps_its_order(mail_store, mailboxes):
    items = [
        (inbound.Envelope(mail_from="x@else.test", rcpt_tos=["bob@a.test"]), f"Subject: {i}\r\n\r\n{i}\r\n".encode(), None)
        for i in range(90)  # SQLite takes 999 parameters: 38 Message rows per INSERT
    ]
    receipts = inbound.receive_many(items)
    subjects = dict(Message.objects.values_list("pk", "subject"))
    assert [subjects[r.message_id] for r in receipts] == [str(i) for i in range(90)]
    assert Delivery.objects.filter(mailbox__address="bob@a.test").count() == 90


@pytest.mark.django_db
def test_forwarding_alias_gets_the_message_instance(mail_store, mailboxes):
    add_alias("fwd@a.test", "bob@a.test")
    add_alias("fwd@a.test", "far@remote.test")
    envelope = inbound.Envelope(mail_from="x@else.test", rcpt_tos=["fwd@a.test"])
    [receipt] = inbound.receive_many([(envelope, b"Subject: f\r\n\r\nf\r\n", None)])
    assert receipt.delivered == ["bob@a.test"] and receipt.forwarded == ["far@remote.test"]
    copy = Message.objects.exclude(pk=receipt.message_id).get()
    assert copy.rcpt_tos == ["far@remote.test"] and copy.subject == "f"
