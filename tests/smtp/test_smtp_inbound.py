"""The inbound MX over real sockets: what it accepts, what it stores, and its replies."""

from __future__ import annotations

import smtplib
import socket
import struct
import subprocess

import pytest

from mailcore.models import Delivery, DeliveryState, Message
from mailcore.services.accounts import add_alias, add_domain, add_mailbox
from mailcore.wire import replies
from tests.conftest import require_program
from tests.factories import stored
from tests.smtp_wire import RawSMTP, starts
from tests.sockets import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE = (
    b"From: Alice <alice@remote.test>\r\n"
    b"To: bob@b.test\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@remote.test>\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b"caf\xc3\xa9 8-bit\r\n"
)


@pytest.fixture
def carol(b_test):
    """carol@b.test beside bob@b.test."""
    return add_mailbox("carol@b.test", "pw")


def split_trace(body: bytes) -> tuple[bytes, bytes]:
    """(the headers we added, the rest), the rest being the client's bytes."""
    marker = body.index(b"From: Alice")
    return body[:marker], body[marker:]


def test_smtplib_message_is_stored_byte_for_byte_with_our_headers(mx, b_test):
    server = mx()
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        code, ehlo = client.ehlo("client.example")
        assert code == 250
        keywords = ehlo.decode().splitlines()[1:]
        assert keywords == ["PIPELINING", "SIZE 26214400", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "SOURCE 2"]
        assert "AUTH" not in ehlo.decode()
        client.mail("alice@remote.test", ["BODY=8BITMIME"])
        client.rcpt("bob@b.test")
        code, text = client.data(MESSAGE)
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    queue_id = text.rsplit(b" ", 1)[1].decode()
    message = Message.objects.get(queue_id=queue_id)
    trace, rest = split_trace(stored(message))
    assert rest == MESSAGE
    assert trace.startswith(b"Return-Path: <alice@remote.test>\r\n")
    assert b"Authentication-Results: mx.test.example; x-source=none smtp.mailfrom=alice@remote.test\r\n" in trace
    assert b"Received: from client.example (127.0.0.1 [127.0.0.1])\r\n\tby mx.test.example with ESMTP id " + queue_id.encode() in trace
    assert b"\tfor <bob@b.test>;" in trace
    assert [d.mailbox.address for d in Delivery.objects.filter(message=message)] == ["bob@b.test"]
    assert message.verification == "unverified" and message.transport == "data"
    server.stop()
    assert f"{queue_id}: client=[127.0.0.1], helo=client.example, from=<alice@remote.test>, to=<bob@b.test>" in server.output()


def test_curl_smtp_upload(mx, carol, tmp_path):
    require_program("curl")
    server = mx()
    eml = tmp_path / "m.eml"
    eml.write_bytes(MESSAGE)
    result = subprocess.run(
        ["curl", "-sS", f"smtp://127.0.0.1:{server.port}/curl.example", "--mail-from", "alice@remote.test",
         "--mail-rcpt", "bob@b.test", "--mail-rcpt", "carol@b.test", "--upload-file", str(eml)],
        capture_output=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    message = Message.objects.get()
    trace, rest = split_trace(stored(message))
    assert rest == MESSAGE
    assert b"for <" not in trace  # two recipients: RFC 5321 §4.4 names none
    assert sorted(d.mailbox.address for d in message.deliveries.all()) == ["bob@b.test", "carol@b.test"]


def test_aliases_catch_all_and_duplicates_give_one_delivery_per_mailbox(mx, carol):
    add_alias("team@b.test", "bob@b.test")
    add_alias("team@b.test", "carol@b.test")
    add_alias("@b.test", "carol@b.test")
    server = mx()
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo()
        client.mail("alice@remote.test")
        for rcpt in ("team@b.test", "bob@b.test", "anything@b.test", "BOB@B.TEST"):
            assert client.rcpt(rcpt)[0] == 250, rcpt
        assert client.data(MESSAGE)[0] == 250
    message = Message.objects.get()
    assert sorted(d.mailbox.address for d in message.deliveries.all()) == ["bob@b.test", "carol@b.test"]


def test_recipient_rules_and_pipelining_after_a_rejected_rcpt(mx, b_test):
    server = mx()
    with RawSMTP(server.port) as c:
        assert b"250 SOURCE 2" in c.greet()
        # One pipelined group (RFC 2920): the replies come back in order.
        c.send(
            b"MAIL FROM:<alice@remote.test>\r\n"
            b"RCPT TO:<nobody@b.test>\r\n"
            b"RCPT TO:<someone@elsewhere.test>\r\n"
            b"RCPT TO:<bob@b.test>\r\n"
            b"DATA\r\n"
        )
        assert starts(c.last(), replies.SENDER_OK)
        assert starts(c.last(), replies.USER_UNKNOWN)
        assert starts(c.last(), replies.RELAY_DENIED)
        assert starts(c.last(), replies.RECIPIENT_OK)
        assert c.last().startswith(b"354 ")
        c.send(b"Subject: pipelined\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert starts(c.last(), replies.QUEUED)
        assert starts(c.last(), replies.BYE)
    message = Message.objects.get()
    assert message.rcpt_tos == ["bob@b.test"]


def test_hundred_recipients_then_452(mx, b_test):
    add_alias("@b.test", "bob@b.test")
    server = mx()
    with RawSMTP(server.port) as c:
        c.greet()
        c.send(b"MAIL FROM:<alice@remote.test>\r\n" + b"".join(b"RCPT TO:<u%d@b.test>\r\n" % i for i in range(101)))
        assert starts(c.last(), replies.SENDER_OK)
        answers = [c.last() for _ in range(101)]
        assert all(starts(a, replies.RECIPIENT_OK) for a in answers[:100])
        assert starts(answers[100], replies.TOO_MANY_RECIPIENTS)
        c.send(b"DATA\r\n")
        assert c.last().startswith(b"354")
        assert starts(c.cmd(b"x\r\n."), replies.QUEUED)
    assert len(Message.objects.get().rcpt_tos) == 100


def segments_received(sock) -> int:
    """tcpi_segs_in of Linux's struct tcp_info (offset 140): every segment this socket has received."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 140)[0]


def test_the_ehlo_reply_is_one_segment(mx, b_test):
    # Each line written on its own was a send(2) and a segment of its own (TCP_NODELAY): six
    # more wake-ups of the client per message than one write.
    server = mx()
    with RawSMTP(server.port) as c:
        assert c.last().startswith(b"220 ")
        before = segments_received(c.sock)
        c.send(b"EHLO client.test\r\n")
        lines = c.reply()
        assert len(lines) == 7 and lines[-1] == b"250 SOURCE 2"
        # One segment with the whole reply; at most one pure ACK of our EHLO before it: no later
        # segment of the reply, or pure ACK, comes in the moment after.
        assert not wait_until(lambda: segments_received(c.sock) - before > 2, 0.2)


def test_size_limits(mx, b_test):
    server = mx(MAIL_MAX_MESSAGE_SIZE="10000")
    with RawSMTP(server.port) as c:
        assert b"250-SIZE 10000" in c.greet()
        assert starts(c.cmd("MAIL FROM:<alice@remote.test> SIZE=10001"), replies.MESSAGE_SIZE_EXCEEDS_LIMIT)
        assert starts(c.cmd("MAIL FROM:<alice@remote.test> SIZE=9000"), replies.SENDER_OK)
        assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_OK)
        assert c.cmd("DATA").startswith(b"354")
        c.send((b"x" * 70 + b"\r\n") * 200)  # 14400 octets: over the limit
        assert starts(c.cmd(b"."), replies.DATA_TOO_BIG)
        # The session goes on: a message within the limit is taken.
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
        assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_OK)
        assert c.cmd("DATA").startswith(b"354")
        assert starts(c.cmd(b"small\r\n."), replies.QUEUED)
    assert Message.objects.count() == 1


def test_unverified_policies_per_domain(mx):
    add_domain("open.test")
    add_domain("held.test", "quarantine")
    add_domain("strict.test", "reject")
    for address in ("o@open.test", "h@held.test", "s@strict.test"):
        add_mailbox(address, "pw")
    server = mx()
    with RawSMTP(server.port) as c:
        c.greet()
        # accept and quarantine mix in one transaction; each recipient gets its own treatment.
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
        assert starts(c.cmd("RCPT TO:<o@open.test>"), replies.RECIPIENT_OK)
        assert starts(c.cmd("RCPT TO:<h@held.test>"), replies.RECIPIENT_OK)
        # reject would mix with them: 452, to be sent in another transaction (RFC 5321 §4.5.3.1.10).
        assert starts(c.cmd("RCPT TO:<s@strict.test>"), replies.POLICY_MIXES)
        assert c.cmd("DATA").startswith(b"354")
        assert starts(c.cmd(b"Subject: one\r\n\r\nhi\r\n."), replies.QUEUED)
        # The retried recipient alone: DATA is refused, nothing is stored.
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
        assert starts(c.cmd("RCPT TO:<s@strict.test>"), replies.RECIPIENT_OK)
        assert starts(c.cmd("RCPT TO:<o@open.test>"), replies.POLICY_MIXES)
        refusal = c.cmd("DATA")
        assert starts(refusal, replies.ONLY_VERIFIED)
        assert b"strict.test accepts only verified mail" in refusal
        assert starts(c.cmd("NOOP"), replies.OK)
    message = Message.objects.get()
    states = {d.mailbox.address: d.state for d in message.deliveries.all()}
    assert states == {"o@open.test": DeliveryState.INBOX, "h@held.test": DeliveryState.QUARANTINED}


def test_database_unreachable_is_temporary(mx, b_test, tmp_path):
    # A database without our tables: every lookup fails the way an unreachable one does.
    server = mx(DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with RawSMTP(server.port) as c:
        c.greet()
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
        assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_TEMPFAIL)
        assert starts(c.cmd("SOURCE " + "a" * 32), replies.SOURCE_NEED_RCPT)
        assert starts(c.cmd("GET " + "a" * 32), replies.TEMPORARY_FAILURE)
        assert starts(c.cmd("QUIT"), replies.BYE)
    assert "Traceback" not in server.output()
