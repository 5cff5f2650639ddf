"""Bad input to the inbound MX ("Bad input gets"): exact replies, nothing stored, still serving."""

from __future__ import annotations

import smtplib

import pytest

from mailcore.models import Message
from mailcore.wire import replies
from tests.smtp_wire import RawSMTP, starts

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(mx, b_test):
    return mx(MAIL_SMTP_MAX_BAD_COMMANDS="50")


def still_serves(port: int) -> None:
    """A fresh client gets a whole message through: the listener survived."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("alice@remote.test", ["bob@b.test"], b"Subject: after\r\n\r\nfine\r\n")


def open_transaction(c: RawSMTP) -> None:
    c.greet()
    assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
    assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_OK)
    assert c.cmd("DATA").startswith(b"354 ")


def test_command_sequence_errors(server):
    with RawSMTP(server.port) as c:
        assert c.last().startswith(b"220 ")
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.NEED_HELO)
        c.send(b"EHLO client.test\r\n")
        c.reply()
        assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.NEED_MAIL)
        assert starts(c.cmd("DATA"), replies.NEED_MAIL)
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.NESTED_MAIL)
        assert starts(c.cmd("DATA"), replies.NEED_RCPT)
        assert starts(c.cmd("RSET"), replies.OK)
        assert starts(c.cmd("MAIL FROM alice"), replies.BAD_SYNTAX)
        assert starts(c.cmd("MAIL FROM:<not an address>"), replies.BAD_SYNTAX)
        assert starts(c.cmd("MAIL FROM:<no-at-sign>"), replies.BAD_SENDER_SYNTAX)
        assert starts(c.cmd("MAIL FROM:<a@remote.test> FOO=BAR"), replies.PARAMETER_UNKNOWN)
        assert starts(c.cmd("MAIL FROM:<a@remote.test> BODY=BINARYMIME"), replies.BAD_SYNTAX)
        assert starts(c.cmd("MAIL FROM:<>"), replies.SENDER_OK)  # the null reverse-path of bounces
        assert starts(c.cmd("RCPT TO:<>"), replies.BAD_RECIPIENT_SYNTAX)
        assert starts(c.cmd("RCPT TO:<bob@b.test> NOTIFY=NEVER"), replies.PARAMETER_UNKNOWN)
        assert starts(c.cmd("AUTH PLAIN AGJvYgBwdw=="), replies.COMMAND_UNRECOGNIZED)  # no AUTH on the MX
        assert starts(c.cmd("EXPN staff"), replies.EXPN_DISABLED)
        assert starts(c.cmd("VRFY bob"), replies.VRFY_CANNOT)
        assert starts(c.cmd("XYZZY"), replies.COMMAND_UNRECOGNIZED)
        assert starts(c.cmd("STARTTLS"), replies.TLS_NOT_AVAILABLE)
        assert starts(c.cmd("QUIT"), replies.BYE)
    still_serves(server.port)


def test_non_ascii_addresses_need_smtputf8(server):
    with RawSMTP(server.port) as c:
        c.greet()
        assert starts(c.cmd("MAIL FROM:<jörg@remote.test>".encode()), replies.NON_ASCII_ADDRESS)
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
        assert starts(c.cmd("RCPT TO:<bøb@b.test>".encode()), replies.NON_ASCII_ADDRESS)
        assert starts(c.cmd("RSET"), replies.OK)
        assert starts(c.cmd("MAIL FROM:<jörg@remote.test> SMTPUTF8".encode()), replies.SENDER_OK)
        # With SMTPUTF8 the address is taken; there is no such mailbox here.
        assert starts(c.cmd("RCPT TO:<bøb@b.test>".encode()), replies.USER_UNKNOWN)
        assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_OK)
        assert c.cmd("DATA").startswith(b"354")
        assert starts(c.cmd("Subject: grüße\r\n\r\nhi\r\n.".encode()), replies.QUEUED)
    message = Message.objects.get()
    assert message.mail_from == "jörg@remote.test"
    assert b"with UTF8SMTP id" in smtp_wire_body(message)


def smtp_wire_body(message: Message) -> bytes:
    from mailcore.store import message_store

    return message_store().read(message.body_ref)


def test_command_line_limits_bare_lf_and_nul(server):
    with RawSMTP(server.port) as c:
        c.greet()
        # RFC 5321 §4.5.3.1.4: 512 octets with the CRLF; 510 + CRLF is fine.
        assert starts(c.cmd(b"NOOP " + b"x" * 505), replies.OK)
        assert starts(c.cmd(b"NOOP " + b"x" * 506), replies.LINE_TOO_LONG)
        assert starts(c.cmd(b"NOOP " + b"x" * 100_000), replies.LINE_TOO_LONG)
        c.send(b"NOOP\n")
        assert starts(c.last(), replies.BARE_LF)
        assert starts(c.cmd(b"NO\x00OP"), replies.NUL_IN_COMMAND)
        assert starts(c.cmd(b"\xff\xfe"), replies.COMMAND_UNRECOGNIZED)
        assert starts(c.cmd(b""), replies.COMMAND_UNRECOGNIZED)
        assert starts(c.cmd("NOOP"), replies.OK)
    still_serves(server.port)


@pytest.mark.parametrize(
    "body, refusal",
    [
        (b"Subject: bare\r\n\r\none\ntwo\r\n", replies.DATA_BARE_LF),
        (b"Subject: smuggle\r\n\r\nhi\n.\nMAIL FROM:<x@y.test>\r\n", replies.DATA_BARE_LF),
        (b"Subject: cr\r\n\r\none\rtwo\r\n", replies.DATA_BARE_LF),
        (b"Subject: nul\r\n\r\nbin\x00ary\r\n", replies.DATA_NUL),
        (b"Subject: long\r\n\r\n" + b"y" * 10_000 + b"\r\n", replies.DATA_LINE_TOO_LONG),
    ],
    ids=["bare-lf", "smuggling", "bare-cr", "nul", "10000-octet-line"],
)
def test_bad_message_content_is_refused_and_not_stored(server, body, refusal):
    with RawSMTP(server.port) as c:
        open_transaction(c)
        c.send(body + b".\r\n")
        assert starts(c.last(), refusal)
        # The transaction is over; the session goes on.
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
    assert Message.objects.count() == 0
    still_serves(server.port)
    assert Message.objects.count() == 1


def test_unterminated_data_then_disconnect_stores_nothing(server):
    with RawSMTP(server.port) as c:
        open_transaction(c)
        c.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
    server.wait_for_output("lost connection in DATA")
    still_serves(server.port)
    assert Message.objects.get().subject == "after"


@pytest.mark.parametrize(
    "line",
    [b"GET / HTTP/1.1", b"POST /submit HTTP/1.1", b"Host: mx.test.example", b"CONNECT example.com:443 HTTP/1.1"],
)
def test_http_lines_close_at_once(server, line):
    with RawSMTP(server.port) as c:
        assert c.last().startswith(b"220 ")
        # The whole request arrives at once: nothing after the first line is answered.
        c.send(line + b"\r\nHost: x\r\nUser-Agent: test\r\n\r\n")
        assert starts(c.last(), replies.NOT_SMTP)
        assert c.closed()
    still_serves(server.port)


def test_too_many_errors_closes_the_session(mx):
    server = mx(MAIL_SMTP_MAX_BAD_COMMANDS="3")
    with RawSMTP(server.port) as c:
        c.greet()
        assert starts(c.cmd("XYZZY"), replies.COMMAND_UNRECOGNIZED)
        assert starts(c.cmd("MAIL FROM:<no-at-sign>"), replies.BAD_SENDER_SYNTAX)
        c.send(b"DATA\r\n")
        assert starts(c.last(), replies.NEED_MAIL)
        assert starts(c.last(), replies.TOO_MANY_ERRORS)
        assert c.closed()
