"""Hostile input to the MX: values that would reach a header, one session's bytes against the
others' mail, verdicts forged in the message, and big messages of short lines."""

from __future__ import annotations

import smtplib
import threading
import time

import pytest

from mailcore.models import Message
from mailcore.store import message_store
from mailcore.wire import replies
from tests.smtp_wire import RawSMTP, starts
from tests.sockets import peak_rss_kb

pytestmark = pytest.mark.django_db(transaction=True)


def send_one(c: RawSMTP, subject: bytes = b"fine") -> bytes:
    """A whole transaction on an open session: the reply to the final dot."""
    assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
    assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_OK)
    assert c.cmd("DATA").startswith(b"354")
    return c.cmd(b"Subject: " + subject + b"\r\n\r\nhi\r\n.")


@pytest.mark.parametrize(
    "command, refusal",
    [
        (b'MAIL FROM:<"a\rX-Injected: yes\r.\r"@remote.test>', replies.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<a\x01b@remote.test>", replies.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<alice@remote.test\x7f>", replies.BAD_SENDER_SYNTAX),
        (b'MAIL FROM:<"a\tb"@remote.test>', replies.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<al\xffice@remote.test>", replies.BAD_SENDER_SYNTAX),  # not UTF-8
        (b"MAIL FROM:<al\xffice@remote.test> SMTPUTF8", replies.BAD_SENDER_SYNTAX),  # not UTF-8 either
        (b"MAIL FROM:<alice@remote.test> BODY=8BIT\x0bMIME", replies.BAD_SYNTAX),
        (b"MAIL FROM:<alice@remote.test> SIZE=1\x1b", replies.BAD_SYNTAX),
    ],
    ids=["cr-in-quoted-local-part", "soh", "del", "tab-quoted", "non-utf8", "non-utf8-smtputf8", "vt-param", "esc-param"],
)
def test_control_characters_in_the_reverse_path_are_refused_and_nothing_is_stored(mx, b_test, command, refusal):
    server = mx()
    with RawSMTP(server.port) as c:
        c.greet()
        assert starts(c.cmd(command), refusal)
        # No transaction was started: the session is clean, and a good one goes through.
        assert starts(send_one(c), replies.QUEUED)
    [message] = Message.objects.all()
    assert message.mail_from == "alice@remote.test"
    body = message_store().read(message.body_ref)
    assert b"X-Injected" not in body and b"\r\r" not in body


@pytest.mark.parametrize(
    "command",
    [b'RCPT TO:<"b\rX-Injected: yes"@b.test>', b"RCPT TO:<bob\x00@b.test>", b"RCPT TO:<bo\x1bb@b.test>", b"RCPT TO:<b\xffob@b.test>"],
    ids=["cr", "nul", "esc", "non-utf8"],
)
def test_control_characters_in_a_forward_path_are_refused(mx, b_test, command):
    server = mx()
    with RawSMTP(server.port) as c:
        c.greet()
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
        reply = c.cmd(command)
        assert starts(reply, replies.BAD_RECIPIENT_SYNTAX) or starts(reply, replies.NUL_IN_COMMAND), reply
        assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_OK)
        assert c.cmd("DATA").startswith(b"354")
        assert starts(c.cmd(b"Subject: x\r\n\r\nhi\r\n."), replies.QUEUED)
    assert Message.objects.get().rcpt_tos == ["bob@b.test"]


@pytest.mark.parametrize("greeting", [b"EHLO bad\xff", b"EHLO a\x01b", b"HELO bad\x1bname", b"EHLO \xc3\x28"])
def test_a_greeting_with_control_characters_or_not_utf8_is_refused(mx, b_test, greeting):
    server = mx()
    with RawSMTP(server.port) as c:
        assert c.last().startswith(b"220 ")
        assert starts(c.cmd(greeting), replies.BAD_HELO_NAME)
        # No name was taken: a transaction needs a greeting first.
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.NEED_HELO)
        c.send(b"EHLO good.test\r\n")
        assert c.reply()[-1] == b"250 SOURCE 2"
        assert starts(send_one(c), replies.QUEUED)
    body = message_store().read(Message.objects.get().body_ref)
    assert b"from good.test (" in body


def test_non_utf8_greetings_beside_twenty_clients_fail_no_message_of_theirs(mx, b_test):
    # One session's bytes once failed a whole group-commit batch of other sessions' mail.
    server = mx()
    accepted: list[int] = []
    failures: list[str] = []
    bad_replies: list[bytes] = []
    stop = threading.Event()

    def good(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                for i in range(10):
                    client.sendmail("alice@remote.test", ["bob@b.test"], f"Subject: c{n}m{i}\r\n\r\nhi\r\n".encode())
                    accepted.append(1)
        except (OSError, smtplib.SMTPException) as exc:
            failures.append(repr(exc))

    def bad() -> None:
        while not stop.is_set():
            with RawSMTP(server.port, timeout=30) as c:
                c.last()
                bad_replies.append(c.cmd(b"EHLO bad\xff\xfe.test"))
                c.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\nQUIT\r\n")
                bad_replies.extend(c.last() for _ in range(4))

    threads = [threading.Thread(target=good, args=(n,)) for n in range(20)]
    bad_threads = [threading.Thread(target=bad) for _ in range(3)]
    for t in bad_threads + threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    for t in bad_threads:
        t.join(timeout=30)
    assert failures == [] and len(accepted) == 200
    assert Message.objects.count() == 200
    assert bad_replies and all(
        starts(r, replies.BAD_HELO_NAME) or starts(r, replies.NEED_HELO) or r.startswith(b"221 ") for r in bad_replies
    ), set(bad_replies)


def test_forged_verdicts_do_not_reach_the_mailbox(mx, b_test):
    # RFC 8601 §5: an Authentication-Results that claims our authserv-id, and X-Spam-* fields
    # that claim our spam check's verdict, are removed before ours are added.
    server = mx()
    forged = (
        b"Authentication-Results: mx.test.example; x-source=pass smtp.mailfrom=ceo@bank.test\r\n"
        b"X-Spam-Status: No, score=-100.0 required=5.0 tests=none\r\n"
        b"x-spam-flag: NO\r\n"
        b"Authentication-Results: (folded)\r\n MX.TEST.EXAMPLE;\r\n\tdkim=pass\r\n"
        b"Authentication-Results: relay.remote.test; spf=pass\r\n"
        b"From: alice@remote.test\r\nSubject: forged\r\n\r\n"
        b"X-Spam-Status: in the body, which is the sender's own business\r\n"
    )
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@remote.test", ["bob@b.test"], forged)
    body = message_store().read(Message.objects.get().body_ref)
    head, _, rest = body.partition(b"\r\n\r\n")
    assert head.count(b"Authentication-Results: mx.test.example;") == 1
    assert b"Authentication-Results: mx.test.example; x-source=none" in head
    assert b"x-source=pass" not in body and b"dkim=pass" not in body
    assert b"X-Spam" not in head and b"x-spam" not in head
    assert b"Authentication-Results: relay.remote.test; spf=pass\r\n" in head  # another's: kept
    assert rest == b"X-Spam-Status: in the body, which is the sender's own business\r\n"


def test_three_big_messages_of_short_lines_hold_little_memory_and_block_no_one(mx, b_test):
    server = mx(MAIL_SMTP_PROCESSES="1")
    with smtplib.SMTP("127.0.0.1", server.port) as warm:  # the first message loads what it needs
        warm.sendmail("alice@remote.test", ["bob@b.test"], b"Subject: warm\r\n\r\nhi\r\n")
    before = peak_rss_kb(server.proc.pid)
    body = b"Subject: big\r\n\r\n" + b"xy\r\n" * (20 * 1024 * 1024 // 4)
    results: list[bytes] = []
    noop_times: list[float] = []
    done = threading.Event()

    def send() -> None:
        # The wire made once and sent by sendall, which lets go of the GIL: smtplib's own
        # dot-stuffing of 20 MB would hold it for seconds and delay this process's NOOPs.
        with RawSMTP(server.port, timeout=120) as c:
            c.greet()
            c.send(b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n")
            assert [c.last()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
            c.send(body)
            results.append(c.cmd(b"."))

    def watch() -> None:
        with RawSMTP(server.port) as c:
            c.greet()
            while not done.is_set():
                started = time.monotonic()
                assert starts(c.cmd("NOOP"), replies.OK)
                noop_times.append(time.monotonic() - started)
                time.sleep(0.05)  # not a wait: the pace at which the watcher samples the listener

    watcher = threading.Thread(target=watch)
    watcher.start()
    senders = [threading.Thread(target=send) for _ in range(3)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(timeout=300)
    done.set()
    watcher.join(timeout=30)
    assert len(results) == 3 and all(starts(r, replies.QUEUED) for r in results), results
    grown_mb = (peak_rss_kb(server.proc.pid) - before) / 1024
    assert grown_mb < 100, f"runsmtp grew by {grown_mb:.0f} MB"
    assert len(noop_times) > 5 and max(noop_times) < 0.5, max(noop_times)
    stored = [m for m in Message.objects.all() if m.subject == "big"]
    assert len(stored) == 3
    assert message_store().read(stored[0].body_ref).endswith(b"xy\r\n" * 1000)
