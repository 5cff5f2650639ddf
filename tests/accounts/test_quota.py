"""Mailbox quotas over real sockets: RCPT 452 4.2.2 for a full mailbox, DATA 552 5.2.2 for a message
that would not fit, usage counted as mail is delivered (concurrently too) and freed by POP3 DELE+QUIT."""

from __future__ import annotations

import poplib
import smtplib
import threading

import pytest

from mailcore.models import Mailbox
from mailcore.services import accounts, inbound
from tests.factories import start_listener

PASSWORD = "correct horse battery"


def message(size: int, subject: str = "quota") -> bytes:
    head = f"From: <sender@x.test>\r\nTo: <alice@a.test>\r\nSubject: {subject}\r\n\r\n".encode()
    body = b"x" * (size - len(head))
    # Lines of 78 octets and CRLF (RFC 5322 §2.1.1), the message exactly `size` octets long.
    lines = [body[i : i + 78] for i in range(0, len(body), 80)]
    text = b"\r\n".join(lines)
    return head + text + b"x" * (size - len(head) - len(text))


def used(address: str = "alice@a.test") -> int:
    return Mailbox.objects.get(address=address).used_bytes


def rcpt_reply(port: int, address: str = "alice@a.test") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.x.test")
        smtp.mail("sender@x.test")
        return smtp.rcpt(address)


@pytest.mark.django_db(transaction=True)
def test_full_mailbox_gets_452_and_pop3_dele_quit_frees_it(mx, server_factory, alice):
    # The quota is set while the listener runs: no RCPT verdict from before may be reused.
    server = mx(MAIL_SMTP_RECIPIENT_CACHE="0")
    # No quota yet (0 means none): two messages of about 2 KB go in, and are counted.
    for n in range(2):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
            smtp.sendmail("sender@x.test", ["alice@a.test"], message(2000, f"m{n}"))
    sizes = sorted(d.message.size for d in alice.deliveries.select_related("message"))
    assert used() == sum(sizes) and sizes[0] > 2000  # our trace headers count too
    Mailbox.objects.filter(pk=alice.pk).update(quota_bytes=sum(sizes))
    # Full: RCPT says so, and a client may try again later.
    code, text = rcpt_reply(server.port)
    assert (code, text) == (452, b"4.2.2 Mailbox full, try again later")
    # Delete one message by POP3: DELE then QUIT commits it, and the space is free again.
    pop3_port = start_listener(server_factory, "runpop3").port
    pop = poplib.POP3("127.0.0.1", pop3_port, timeout=30)
    pop.user("alice@a.test")
    pop.pass_(PASSWORD)
    assert pop.dele(1).startswith(b"+OK")
    assert used() == sum(sizes)  # nothing is freed before QUIT (RFC 1939 §6)
    assert pop.quit().startswith(b"+OK")
    assert used() == sizes[1]
    assert rcpt_reply(server.port) == (250, b"2.1.5 Recipient OK")
    # A message that would not fit: 552 5.2.2 at DATA; a smaller one still fits.
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.x.test")
        smtp.mail("sender@x.test")
        assert smtp.rcpt("alice@a.test")[0] == 250
        code, text = smtp.data(message(sizes[0] + 10))
        assert (code, text) == (552, b"5.2.2 Message exceeds the recipient's mailbox quota")
        smtp.rset()
        smtp.sendmail("sender@x.test", ["alice@a.test"], message(500))
    assert used() == sum(d.message.size for d in alice.deliveries.filter(state="inbox").select_related("message"))


@pytest.mark.django_db(transaction=True)
def test_usage_is_counted_atomically_under_concurrent_deliveries(mx, alice):
    server = mx(MAIL_SMTP_PROCESSES="2")
    errors = []

    def send(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as smtp:
                for k in range(5):
                    smtp.sendmail("sender@x.test", ["alice@a.test"], message(1000 + 37 * n + k, f"{n}-{k}"))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    deliveries = list(alice.deliveries.select_related("message"))
    assert len(deliveries) == 40
    assert used() == sum(d.message.size for d in deliveries)


@pytest.mark.django_db(transaction=True)
def test_a_mailbox_over_quota_with_another_recipient_still_gets_the_message(mx, alice):
    """No silent loss after a 250: the full mailbox goes over by this one message; RCPT refuses the next."""
    accounts.add_mailbox("bob@a.test", PASSWORD)
    Mailbox.objects.filter(pk=alice.pk).update(quota_bytes=1000)
    server = mx()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        assert smtp.sendmail("sender@x.test", ["alice@a.test", "bob@a.test"], message(2000)) == {}
    assert used() > 1000 and used("bob@a.test") == used()
    assert rcpt_reply(server.port)[0] == 452


@pytest.mark.django_db
def test_quarantine_delete_frees_space_and_zero_means_no_quota(alice):
    Mailbox.objects.filter(pk=alice.pk).update(quota_bytes=0)
    receipt = inbound.receive(inbound.Envelope(mail_from="s@x.test", rcpt_tos=["alice@a.test"]), message(3000))
    assert used() == receipt.message.size
    assert not inbound.check_recipient("alice@a.test").full
    from mailcore.services import quarantine

    delivery = alice.deliveries.get()
    delivery.state = "quarantined"
    delivery.save()
    quarantine.delete(delivery.pk)
    assert used() == 0


@pytest.mark.django_db(transaction=True)
def test_usage_moves_per_mailbox_and_never_below_zero(alice):
    from mailcore.services import quota

    bob = accounts.add_mailbox("bob@a.test", PASSWORD)
    quota.charge([(alice.pk, 300), (bob.pk, 50), (alice.pk, 200)])
    assert (used(), used("bob@a.test")) == (500, 50)
    # A count made before usage was counted may refund more than was charged: usage stops at 0.
    quota.refund([(alice.pk, 400), (bob.pk, 80)])
    assert (used(), used("bob@a.test")) == (100, 0)
