"""SOURCE (reverse-delivery.md §3, receiving role) and GET (§4, origin role) on the MX, over raw sockets."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.utils import timezone

from mailcore.models import Announcement, AnnouncementState, Message, SourcedMessage, Transport, Verification
from mailcore.services.accounts import add_domain, add_mailbox
from mailcore.store import message_store
from mailcore.wire import replies
from tests.smtp_wire import RawSMTP, starts
from tests.sockets import free_port

pytestmark = pytest.mark.django_db(transaction=True)

ID = "5f1c0a3e9b7d4c2a8e6f1b3d5a7c9e0f"


@pytest.fixture
def strict_test(b_test):
    """strict.test, which takes only verified mail, with sam@strict.test, beside b.test."""
    add_domain("strict.test", "reject")
    add_mailbox("sam@strict.test", "pw")


def announce(c: RawSMTP, source_id: str = ID, sender: str = "alice@a.test", rcpt: str = "bob@b.test") -> bytes:
    assert starts(c.cmd(f"MAIL FROM:<{sender}>"), replies.SENDER_OK)
    assert starts(c.cmd(f"RCPT TO:<{rcpt}>"), replies.RECIPIENT_OK)
    return c.cmd(f"SOURCE {source_id}")


def test_source_is_recorded_before_250_and_ends_the_transaction(mx, strict_test):
    server = mx()
    with RawSMTP(server.port) as c:
        c.greet("mx.a.test")
        # A pipelined group ending in SOURCE, as DATA may end one (§3).
        c.send(f"MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nRCPT TO:<sam@strict.test>\r\nSOURCE {ID}\r\n".encode())
        assert starts(c.last(), replies.SENDER_OK)
        assert starts(c.last(), replies.RECIPIENT_OK)
        assert starts(c.last(), replies.POLICY_MIXES)
        accepted = c.last()
        assert accepted == f"250 2.6.0 {ID} accepted for retrieval".encode()
        assert starts(c.cmd("DATA"), replies.NEED_MAIL)  # the transaction is over, as after DATA
        # A domain that takes only verified mail takes an announcement.
        assert starts(announce(c, "A" * 32, rcpt="sam@strict.test"), replies.SOURCE_ACCEPTED)
    first, second = Announcement.objects.order_by("id")
    assert (first.source_id, first.mail_from, first.sender_domain, first.rcpt_tos) == (ID, "alice@a.test", "a.test", ["bob@b.test"])
    assert (first.client_address, first.helo_name, first.state) == ("127.0.0.1", "mx.a.test", AnnouncementState.PENDING)
    assert second.rcpt_tos == ["sam@strict.test"]
    assert Message.objects.count() == 0  # nothing reaches a mailbox before the pull (§5.1)
    if not os.environ.get("REDIS_URL"):
        from django_q.models import OrmQ

        assert OrmQ.objects.count() >= 1  # the first pull was enqueued on commit (§5.2)


def test_source_replies_of_the_table(mx, b_test):
    server = mx()
    with RawSMTP(server.port) as c:
        c.greet("mx.a.test")
        assert starts(c.cmd(f"SOURCE {ID}"), replies.SOURCE_NEED_MAIL)
        assert starts(c.cmd("MAIL FROM:<alice@a.test>"), replies.SENDER_OK)
        assert starts(c.cmd(f"SOURCE {ID}"), replies.SOURCE_NEED_RCPT)
        for bad in ("a" * 31, "a" * 33, "a" * 31 + "-", "a" * 31 + "é", ""):
            assert starts(announce(c, bad), replies.SOURCE_BAD_ID), bad
        assert starts(announce(c, ID, sender=""), replies.SOURCE_NULL_SENDER)
        # After any reply the transaction is over.
        assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.NEED_MAIL)
    with RawSMTP(server.port) as c:
        assert c.last().startswith(b"220 ")
        c.send(b"HELO mx.a.test\r\n")
        assert c.last().startswith(b"250 ")
        assert starts(c.cmd("MAIL FROM:<alice@a.test>"), replies.SENDER_OK)
        assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_OK)
        assert starts(c.cmd(f"SOURCE {ID}"), replies.SOURCE_NEED_EHLO)
    assert Announcement.objects.count() == 0


def test_pending_caps_per_client_and_per_sender_domain(mx, b_test):
    for n in range(15):
        Announcement.objects.create(source_id=f"{n:032d}", mail_from="x@busy.test", sender_domain="busy.test",
                                    rcpt_tos=["bob@b.test"], client_address=f"192.0.2.{n}", helo_name="elsewhere")
    # One client's share of a sender domain's 15 slots is 3 (a fifth): it cannot take them all.
    server = mx(MAIL_SOURCE_MAX_PENDING_PER_CLIENT="5", MAIL_SOURCE_MAX_PENDING_PER_DOMAIN="15")
    with RawSMTP(server.port) as c:
        c.greet("mx.a.test")
        assert starts(announce(c, "b" * 32, sender="x@busy.test"), replies.SOURCE_TOO_MANY_PENDING)
        for n in range(3):
            assert starts(announce(c, f"c{n}" * 16), replies.SOURCE_ACCEPTED)
        refusal = announce(c, "d" * 32)
        assert starts(refusal, replies.SOURCE_TOO_MANY_PENDING) and b"your address for the domain a.test" in refusal
        # Another sender domain still has room for this client, up to the client's own cap (5).
        for n in range(2):
            assert starts(announce(c, f"e{n}" * 16, sender="carol@c.test"), replies.SOURCE_ACCEPTED)
        refusal = announce(c, "f" * 32, sender="dave@d.test")
        assert starts(refusal, replies.SOURCE_TOO_MANY_PENDING) and refusal.endswith(b"from your address, try again later")
        # An id is never reused (spec §3 rule 2): the same one again is a replay, refused before any cap.
        assert announce(c, "c0" * 16) == b"554 5.7.1 " + b"c0" * 16 + b" already announced"
    assert Announcement.objects.filter(client_address="127.0.0.1").count() == 5


def sourced(content: bytes, source_id: str = ID, **fields) -> SourcedMessage:
    body = message_store().put(content)
    message = Message.objects.create(body_ref=body.ref, size=body.size, sha256=body.sha256, mail_from="alice@b.test",
                                     rcpt_tos=["carol@c.test"], transport=Transport.SUBMISSION,
                                     verification=Verification.VERIFIED)
    values = {"expires_at": timezone.now() + timedelta(days=5), **fields}
    return SourcedMessage.objects.create(source_id=source_id, message=message, mail_from="alice@b.test",
                                         rcpt_tos=["carol@c.test"], destination_host="mx.c.test", **values)


def read_data_form(c: RawSMTP) -> bytes:
    lines = []
    while (line := c.file.readline()) != b".\r\n":
        assert line, "the connection closed before the final dot"
        lines.append(line)
    return b"".join(lines)


def test_get_streams_the_body_in_data_form_and_records_fetches(mx):
    content = b"Subject: x\r\n\r\n.dot\r\n..two\r\n" + (b"z" * 900 + b"\r\n") * 3000 + b".\r\nend"
    sourced(content)
    server = mx()
    with RawSMTP(server.port) as c:
        c.greet("mx.c.test")
        c.send(f"GET {ID}\r\nGET {ID}\r\n".encode())  # pipelined
        for _ in range(2):
            # Spec §4: the status line, the envelope of the id's transaction, then the message.
            assert c.reply() == [f"250-2.0.0 {ID} message follows".encode(), b"250-FROM <alice@b.test>", b"250 TO <carol@c.test>"]
            wire = read_data_form(c)
            assert wire.startswith(b"Subject: x\r\n\r\n..dot\r\n...two\r\n")
            assert wire.endswith(b"..\r\nend\r\n")  # a CRLF is added before the final dot
            assert wire.replace(b"\r\n.", b"\r\n")[:-2] == content
        assert starts(c.cmd("NOOP"), replies.OK)
    row = SourcedMessage.objects.get()
    assert row.fetch_count == 2 and row.first_fetch_address == row.last_fetch_address == "127.0.0.1"
    assert row.first_fetch_at <= row.last_fetch_at


def test_get_replies_of_the_table(mx, b_test):
    sourced(b"Subject: old\r\n\r\nx\r\n", "e" * 32, expires_at=timezone.now() - timedelta(seconds=1))
    sourced(b"Subject: gone\r\n\r\nx\r\n", "f" * 32, expired=True)
    server = mx()
    with RawSMTP(server.port) as c:
        assert c.last().startswith(b"220 ")
        assert starts(c.cmd(f"GET {ID}"), replies.GET_NEED_EHLO)
        c.send(b"HELO mx.c.test\r\n")
        c.reply()
        assert starts(c.cmd(f"GET {ID}"), replies.GET_NEED_EHLO)
        c.send(b"EHLO mx.c.test\r\n")
        c.reply()
        for unknown in (ID, "e" * 32, "f" * 32):
            assert c.cmd(f"GET {unknown}") == f"550 5.1.0 {unknown} unknown".encode()
        for bad in ("a" * 31, "a" * 33, "a" * 31 + "!", ""):
            assert starts(c.cmd(f"GET {bad}".strip()), replies.GET_BAD_ID), bad
        assert starts(c.cmd("MAIL FROM:<alice@a.test>"), replies.SENDER_OK)
        assert starts(c.cmd(f"GET {ID}"), replies.GET_IN_TRANSACTION)
    assert SourcedMessage.objects.filter(fetch_count__gt=0).count() == 0


def test_eleven_unknown_gets_in_a_minute_get_421(mx):
    sourced(b"Subject: real\r\n\r\nx\r\n")
    server = mx()
    with RawSMTP(server.port) as c:
        c.greet("guesser.test")
        for n in range(10):
            assert starts(c.cmd(f"GET {n:032d}"), replies.GET_UNKNOWN)
        assert starts(c.cmd(f"GET {10:032d}"), replies.GET_TOO_MANY_UNKNOWN)
        assert c.closed()
    # The count is per client address, not per connection; but a later connection still gets the
    # ids that exist (spec §6, Fair pulls), and only the next unknown one gets 421 again.
    with RawSMTP(server.port) as c:
        c.greet("guesser.test")
        c.send(f"GET {ID}\r\n".encode())
        assert c.reply()[0] == f"250-2.0.0 {ID} message follows".encode()
        assert read_data_form(c) == b"Subject: real\r\n\r\nx\r\n"
        assert starts(c.cmd(f"GET {11:032d}"), replies.GET_TOO_MANY_UNKNOWN)
        assert c.closed()


def test_strict_mode_with_dns_unreachable_is_temporary(mx):
    sourced(b"Subject: real\r\n\r\nx\r\n")
    dead_dns = f"127.0.0.1:{free_port()}"
    server = mx(MAIL_SOURCE_STRICT="1", MAIL_DNS_SERVERS=dead_dns, MAIL_DNS_TIMEOUT="0.5")
    with RawSMTP(server.port) as c:
        c.greet("mx.c.test")
        assert starts(c.cmd(f"GET {ID}"), replies.TEMPORARY_FAILURE)
    assert SourcedMessage.objects.get().fetch_count == 0
