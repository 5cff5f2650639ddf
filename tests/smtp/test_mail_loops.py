"""Mail loops: two servers whose aliases point at each other stop the message with 554 5.4.6 and
hold a bounded number of copies; too many Received headers (RFC 5321 §6.3) are refused likewise."""

from __future__ import annotations

import smtplib

import pytest

from mailcore.models import Message
from mailcore.services import accounts
from tests.dkim_support import unsigned
from tests.sockets import wait_until

pytest_plugins = ["tests.instances"]

MESSAGE = "From: <sender@x.test>\r\nTo: <loop@a.test>\r\nSubject: round and round\r\n\r\nhello\r\n"


def message_count(instance) -> int:
    return instance.query("SELECT count(*) FROM mailcore_message")[0][0]


def test_aliases_pointing_at_each_other_stop_with_554_and_bounded_copies(start_instances):
    # DATA between the two, so that the refusal is the 554 of a DATA (SOURCE is covered below).
    a, b = start_instances(env={"MAIL_USE_SOURCE": "0"})
    assert a.manage("alias", "add", "loop@a.test", "loop@b.test").returncode == 0
    assert b.manage("alias", "add", "loop@b.test", "loop@a.test").returncode == 0
    with smtplib.SMTP(a.address, a.smtp_port, timeout=10) as client:
        client.sendmail("sender@x.test", ["loop@a.test"], MESSAGE)
    # a forwards to b (Delivered-To: loop@a.test); b forwards back (Delivered-To: loop@b.test too);
    # a refuses it, and b's queue gives up on it at once.
    rows = b.wait_for_queue(lambda rows: any(r["state"] == "bounced" for r in rows), timeout=30)
    [item] = [r for r in rows if r["recipient"] == "loop@a.test"]
    assert item["recipient"] == "loop@a.test"
    assert item["last_reply"].startswith("554 5.4.6 Mail loop detected: already delivered to loop@a.test"), item
    [forwarded] = a.wait_for_queue(lambda rows: rows and rows[0]["state"] == "sent")
    assert forwarded["recipient"] == "loop@b.test"
    # Bounded: each server holds what it received and its one forwarded copy; b also the failure
    # notice to the reverse-path of its copy, postmaster@b.test (from <>: it bounces no further).
    assert (message_count(a), message_count(b)) == (2, 3), b.query("SELECT mail_from, rcpt_tos, transport FROM mailcore_message")
    [body] = b.query(
        "SELECT m.body_ref FROM mailcore_message m JOIN mailcore_queueitem q ON q.message_id = m.id WHERE q.recipient = %s",
        ("loop@a.test",),
    )
    sent_back = b.body(body[0])
    assert unsigned(sent_back).startswith(b"Delivered-To: loop@b.test\r\n")  # under our ARC set and signatures
    assert b"\r\nDelivered-To: loop@a.test\r\n" in sent_back
    assert not wait_until(lambda: (message_count(a), message_count(b)) != (2, 3), 2)  # and no more come


def test_a_loop_through_source_stops_too(start_instances):
    """With reverse delivery the message comes back by SOURCE: the pull is not delivered, nor forwarded."""
    a, b = start_instances()
    assert a.manage("alias", "add", "loop@a.test", "loop@b.test").returncode == 0
    assert b.manage("alias", "add", "loop@b.test", "loop@a.test").returncode == 0
    with smtplib.SMTP(a.address, a.smtp_port, timeout=10) as client:
        client.sendmail("sender@x.test", ["loop@a.test"], MESSAGE)
    refused = wait_until(
        lambda: a.query("SELECT last_error FROM mailcore_announcement WHERE last_error LIKE %s", ("%already delivered to loop@a.test%",)),
        30,
        interval=0.2,
    )
    assert refused, a.logs()
    # a: the original and its forwarded copy; b: what it pulled and its forwarded copy. No more, then or later.
    assert (message_count(a), message_count(b)) == (2, 2)
    assert not wait_until(lambda: (message_count(a), message_count(b)) != (2, 2), 2)


RECEIVED = "Received: from hop{n}.x.test by hop{n}.x.test; Thu, 3 Dec 2026 10:00:00 +0000\r\n"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("hops, reply", [(30, 250), (31, 554)])
def test_more_received_headers_than_the_limit_is_a_loop(mx, hops, reply):
    accounts.add_domain("a.test")
    accounts.add_mailbox("alice@a.test", "pw")
    server = mx()
    content = "".join(RECEIVED.format(n=n) for n in range(hops)) + MESSAGE
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.x.test")
        smtp.mail("sender@x.test")
        smtp.rcpt("alice@a.test")
        code, text = smtp.data(content)
    assert code == reply
    if reply == 554:
        assert text == f"5.4.6 Mail loop detected: {hops} Received headers".encode()
        assert not Message.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_received_limit_is_a_setting(mx):
    accounts.add_domain("a.test")
    accounts.add_mailbox("alice@a.test", "pw")
    server = mx(MAIL_MAX_RECEIVED_HEADERS="2")
    content = "".join(RECEIVED.format(n=n) for n in range(3)) + MESSAGE
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("sender@x.test", ["alice@a.test"], content)
    assert refused.value.smtp_code == 554
