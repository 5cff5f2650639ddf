"""The spam check in `inbound.receive` against a real spamd: thresholds by verification, reject, spamd down or slow."""

from __future__ import annotations

import logging
import socket
import time
from email.utils import formatdate

import pytest

from mailcore.models import Delivery, DeliveryState, Domain, Message, SpamStatus, Transport, Verification
from mailcore.services import accounts
from mailcore.services.inbound import Envelope, PolicyRejection, receive, spam_verdict
from mailcore.spam.check import SpamRejection
from tests.factories import stored
from tests.spamd_server import GTUBE

pytestmark = pytest.mark.django_db


@pytest.fixture
def spam_on(settings, spamd):
    settings.MAIL_SPAMD = spamd.address
    settings.MAIL_SPAMD_TIMEOUT = 10.0
    return spamd


def thresholds(name: str = "a.test", *, verified: float = 8.0, unverified: float = 3.0, reject: float | None = None) -> None:
    Domain.objects.filter(name=name).update(
        spam_threshold_verified=verified, spam_threshold_unverified=unverified, spam_reject_score=reject
    )


def message(body: str, subject: str = "Minutes of Tuesday's meeting") -> bytes:
    text = (
        "From: Bob Example <bob@b.test>\r\n"
        "To: Alice Example <alice@a.test>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"  # now: an old Date scores DATE_IN_PAST_*
        "Message-ID: <20261126184900.1234@mail.b.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}\r\n"
    )
    return text.encode()


NORMAL = message(
    "Hi Alice,\r\n\r\nhere are the minutes of Tuesday's meeting. We agreed to move the release\r\n"
    "to next week and to review the open issues on Monday morning.\r\n\r\nRegards,\r\nBob"
)
SPAM = message(f"This is the GTUBE, the generic test for unsolicited bulk email:\r\n\r\n{GTUBE}", subject="Test spam mail (GTUBE)")


def by_data(rcpt_tos=("alice@a.test",)) -> Envelope:
    """Plain DATA from the outside: unverified."""
    return Envelope(
        mail_from="bob@b.test", rcpt_tos=list(rcpt_tos), client_address="203.0.113.9", client_name="mail.b.test",
        helo_name="mail.b.test", transport=Transport.DATA, verification=Verification.UNVERIFIED,
    )


def by_verified_source(rcpt_tos=("alice@a.test",)) -> Envelope:
    """A body pulled by GET from the sender domain's MX after SOURCE: verified."""
    return Envelope(
        mail_from="bob@b.test", rcpt_tos=list(rcpt_tos), client_address="203.0.113.9", client_name="mail.b.test",
        helo_name="mail.b.test", transport=Transport.SOURCE, verification=Verification.VERIFIED, auth_result="pass",
    )


def head_of(body: bytes) -> str:
    return body.split(b"\r\n\r\n", 1)[0].decode()


def test_gtube_by_data_is_quarantined_as_spam(spam_on, alice):
    thresholds(verified=8.0, unverified=3.0)
    receipt = receive(by_data(), SPAM)

    assert receipt.quarantined == ["alice@a.test"] and receipt.delivered == []
    delivery = Delivery.objects.get(message=receipt.message, mailbox=alice)
    assert (delivery.state, delivery.reason) == (DeliveryState.QUARANTINED, "spam")
    msg = Message.objects.get(pk=receipt.message.pk)
    assert msg.spam_status == SpamStatus.SCORED
    assert msg.spam_score >= 1000
    assert "GTUBE" in msg.spam_rules
    head = head_of(stored(receipt))
    assert f"\r\nX-Spam-Status: Yes, score={msg.spam_score:.1f} required=3.0 tests=" in head and "GTUBE" in head
    assert f"\r\nX-Spam-Score: {msg.spam_score:.1f}\r\n" in head
    assert f"x-spam=fail (score={msg.spam_score:.1f})" in msg.auth_results
    assert f"Authentication-Results: {msg.auth_results}\r\n" in head
    # The original message follows our headers untouched.
    assert stored(receipt).endswith(SPAM)


def test_same_gtube_verified_under_lenient_threshold_is_delivered(spam_on, alice):
    # GTUBE scores 1000: above the strict threshold, below the lenient one. Only the way the
    # message arrived differs between the two receipts.
    thresholds(verified=1500.0, unverified=3.0)

    verified = receive(by_verified_source(), SPAM)
    unverified = receive(by_data(), SPAM)

    assert verified.delivered == ["alice@a.test"] and verified.quarantined == []
    assert unverified.quarantined == ["alice@a.test"] and unverified.delivered == []
    assert Delivery.objects.get(message=verified.message).state == DeliveryState.INBOX
    verified_msg = Message.objects.get(pk=verified.message.pk)
    assert verified_msg.spam_status == SpamStatus.SCORED and verified_msg.spam_score >= 1000
    head = head_of(stored(verified))
    assert f"\r\nX-Spam-Status: No, score={verified_msg.spam_score:.1f} required=1500.0 tests=" in head
    assert "x-source=pass" in verified_msg.auth_results
    assert f"x-spam=pass (score={verified_msg.spam_score:.1f})" in verified_msg.auth_results


def test_normal_message_is_delivered_verified_or_not(spam_on, alice):
    thresholds(verified=8.0, unverified=3.0)
    for envelope in (by_data(), by_verified_source()):
        receipt = receive(envelope, NORMAL)
        assert receipt.delivered == ["alice@a.test"], envelope.verification
        msg = Message.objects.get(pk=receipt.message.pk)
        assert msg.spam_status == SpamStatus.SCORED
        assert msg.spam_score < 3.0
        assert "GTUBE" not in msg.spam_rules
        assert "\r\nX-Spam-Status: No, score=" in head_of(stored(receipt))


def test_reject_score_refuses_spam_before_anything_is_stored(spam_on, alice, mail_store):
    thresholds(verified=8.0, unverified=3.0, reject=500.0)
    with pytest.raises(SpamRejection) as refused:
        receive(by_data(), SPAM)

    assert isinstance(refused.value, PolicyRejection)
    assert refused.value.reply.startswith("550 5.7.1 ")
    assert (refused.value.code, refused.value.status) == (550, "5.7.1")
    assert refused.value.score >= 1000 and "GTUBE" in refused.value.rules
    assert not Message.objects.exists()
    assert not [p for p in mail_store.rglob("*") if p.is_file()]


def test_reject_score_never_overrides_the_verified_threshold(spam_on, alice):
    thresholds(verified=1500.0, unverified=3.0, reject=500.0)
    assert receive(by_verified_source(), SPAM).delivered == ["alice@a.test"]


def test_refusing_domain_quarantines_when_another_recipient_accepts(spam_on, alice):
    # DATA has one reply for all recipients: after a 250, the refusing domain must hold the
    # message rather than drop it.
    accounts.add_domain("c.test")
    accounts.add_mailbox("carol@c.test", "secret")
    thresholds("a.test", reject=500.0)
    thresholds("c.test", unverified=2000.0)

    receipt = receive(by_data(["alice@a.test", "carol@c.test"]), SPAM)

    assert receipt.quarantined == ["alice@a.test"] and receipt.delivered == ["carol@c.test"]
    assert Delivery.objects.get(mailbox=alice).reason == "spam"


def receive_with_spamd_at(settings, caplog, address, timeout: float):
    """SPAM received by DATA for alice with MAIL_SPAMD at `address`: (its receipt, its Message, the seconds it took)."""
    settings.MAIL_SPAMD = address
    settings.MAIL_SPAMD_TIMEOUT = timeout
    with caplog.at_level(logging.WARNING, logger="mailcore.spam"):
        started = time.monotonic()
        receipt = receive(by_data(), SPAM)
        elapsed = time.monotonic() - started
    assert receipt.delivered == ["alice@a.test"]
    return receipt, Message.objects.get(pk=receipt.message.pk), elapsed


def test_spamd_stopped_mail_is_delivered_unscored(settings, alice, caplog):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
        receipt, msg, elapsed = receive_with_spamd_at(settings, caplog, closed.getsockname(), 2.0)
    assert (msg.spam_status, msg.spam_score, msg.spam_rules) == (SpamStatus.UNSCORED, None, [])
    head = head_of(stored(receipt))
    assert "\r\nX-Spam-Status: Unscored, spamd unavailable\r\n" in head
    assert "X-Spam-Score" not in head
    assert "x-spam=temperror (spamd unavailable)" in msg.auth_results
    assert "accepted unscored" in caplog.text and "cannot talk to spamd" in caplog.text
    assert elapsed < 2.0


def test_spamd_that_never_answers_times_out_and_mail_is_delivered_unscored(settings, alice, caplog):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        receipt, msg, elapsed = receive_with_spamd_at(settings, caplog, silent.getsockname(), 0.5)
    assert msg.spam_status == SpamStatus.UNSCORED
    assert "\r\nX-Spam-Status: Unscored, spamd timed out\r\n" in head_of(stored(receipt))
    assert "gave no answer within 0.5 s" in caplog.text
    assert 0.5 <= elapsed < 1.5


def test_spam_check_off_when_mail_spamd_is_unset(settings, alice):
    settings.MAIL_SPAMD = None
    receipt = receive(by_data(), SPAM)
    assert receipt.delivered == ["alice@a.test"]
    msg = Message.objects.get(pk=receipt.message.pk)
    assert (msg.spam_status, msg.spam_score) == (SpamStatus.SKIPPED, None)
    head = head_of(stored(receipt))
    assert "X-Spam-" not in head and "x-spam" not in msg.auth_results


def test_submitted_mail_is_not_scored(spam_on, alice):
    envelope = Envelope(mail_from="alice@a.test", rcpt_tos=["alice@a.test"], transport=Transport.SUBMISSION,
                        protocol="ESMTPA", verification=Verification.VERIFIED)
    receipt = receive(envelope, SPAM)
    assert receipt.delivered == ["alice@a.test"]
    assert Message.objects.get(pk=receipt.message.pk).spam_status == SpamStatus.SKIPPED


def test_message_above_the_size_limit_is_skipped_and_delivered(spam_on, settings, alice):
    settings.MAIL_SPAMD_MAX_SIZE = 1000
    big = message(GTUBE + "\r\n" + "filler line of a long message\r\n" * 100)
    receipt = receive(by_data(), big)
    assert receipt.delivered == ["alice@a.test"]
    assert Message.objects.get(pk=receipt.message.pk).spam_status == SpamStatus.SKIPPED
    assert "\r\nX-Spam-Status: Skipped, larger than 1000 octets\r\n" in head_of(stored(receipt))


def test_verdict_made_beforehand_is_used_by_receive_without_asking_spamd_again(spam_on, settings, alice):
    # A caller inside a transaction (the GET pull) scores first, then receives with the verdict.
    envelope = by_data(["Alice@A.Test"])
    verdict = spam_verdict(envelope, SPAM)
    assert verdict.status == SpamStatus.SCORED and verdict.quarantines("alice@a.test")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        settings.MAIL_SPAMD = closed.getsockname()  # a second check would be unscored
        receipt = receive(envelope, SPAM, spam=verdict)
    assert receipt.quarantined == ["alice@a.test"]
    msg = Message.objects.get(pk=receipt.message.pk)
    assert (msg.spam_status, msg.spam_score) == (SpamStatus.SCORED, verdict.score)
    assert Delivery.objects.get(message=msg).reason == "spam"


def test_refusal_made_beforehand_is_raised_before_any_transaction(spam_on, alice):
    thresholds(reject=500.0)
    with pytest.raises(SpamRejection, match="refused as spam"):
        spam_verdict(by_data(), SPAM)
