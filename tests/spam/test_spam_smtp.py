"""The spam check over the wire: GTUBE sent to a real `runsmtp` with smtplib, scored by a real spamd."""

from __future__ import annotations

import smtplib
import socket
import time
from email.utils import formatdate

import pytest

from mailcore.models import Delivery, DeliveryState, Domain, Message, SpamStatus
from mailcore.store import message_store
from tests.spamd_server import GTUBE

pytestmark = pytest.mark.django_db(transaction=True)

SPAM = (
    "From: Bob <bob@remote.test>\r\n"
    "To: alice@a.test\r\n"
    "Subject: Test spam mail (GTUBE)\r\n"
    f"Date: {formatdate(usegmt=True)}\r\n"  # now: an old Date scores DATE_IN_PAST_*
    "Message-ID: <gtube-1@remote.test>\r\n"
    "\r\n"
    f"{GTUBE}\r\n"
).encode()


def test_gtube_by_data_is_quarantined_as_spam(mx, spamd, alice):
    server = mx(MAIL_SPAMD=f"{spamd.host}:{spamd.port}")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        assert client.sendmail("bob@remote.test", ["alice@a.test"], SPAM) == {}

    delivery = Delivery.objects.select_related("message").get(mailbox=alice)
    assert (delivery.state, delivery.reason) == (DeliveryState.QUARANTINED, "spam")
    assert delivery.message.spam_status == SpamStatus.SCORED and "GTUBE" in delivery.message.spam_rules
    body = message_store().read(delivery.message.body_ref)
    assert b"\r\nX-Spam-Status: Yes, score=" in body and b"\r\nX-Spam-Score: " in body


def test_gtube_above_the_reject_score_gets_550_and_nothing_is_stored(mx, spamd, alice):
    Domain.objects.filter(name="a.test").update(spam_reject_score=500.0)
    server = mx(MAIL_SPAMD=f"{spamd.host}:{spamd.port}")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("bob@remote.test", ["alice@a.test"], SPAM)
        assert client.noop()[0] == 250  # the session goes on
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 Message refused as spam (score ")
    assert not Message.objects.exists()


def test_silent_spamd_delays_the_reply_by_the_timeout_only(mx, alice):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel; nobody answers
        server = mx(MAIL_SPAMD=f"127.0.0.1:{silent.getsockname()[1]}", MAIL_SPAMD_TIMEOUT="1")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.ehlo("client.test")
            client.mail("bob@remote.test")
            client.rcpt("alice@a.test")
            started = time.monotonic()
            code, _ = client.data(SPAM)
            elapsed = time.monotonic() - started
    assert code == 250
    assert 1.0 <= elapsed < 2.5
    delivery = Delivery.objects.select_related("message").get(mailbox=alice)
    assert delivery.state == DeliveryState.INBOX
    assert delivery.message.spam_status == SpamStatus.UNSCORED
    assert "spam check failed, accepted unscored" in server.output()
