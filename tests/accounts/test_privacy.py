"""Privacy: Bcc fields never reach a recipient (submission and sendmail), and a mailbox owner sees
only their own address among a message's envelope recipients."""

from __future__ import annotations

import smtplib

import pytest

from mailcore.models import Delivery
from mailcore.services import accounts
from tests.web_client import WebClient, start_web

pytest_plugins = ["tests.instances"]

BLIND = (
    "From: <alice@a.test>\r\nTo: <bob@b.test>\r\nBcc: <alice@a.test>,\r\n <secret@elsewhere.test>\r\n"
    "Subject: {subject}\r\n\r\nBcc: this line is the body, and stays\r\n"
)


def test_bcc_is_removed_from_submitted_and_sendmail_mail_for_every_recipient(instances):
    a, b = instances
    with smtplib.SMTP(a.address, a.submission_port, timeout=10) as client:
        client.login("alice@a.test", "alice-password")
        # bob (remote) in To:, alice herself (local) only in Bcc:.
        client.sendmail("alice@a.test", ["bob@b.test", "alice@a.test"], BLIND.format(subject="submitted"))
    stdin = BLIND.format(subject="sendmail").replace("\r\n", "\n")  # a shell's message: bare LF
    result = a.manage("sendmail", "-f", "alice@a.test", "bob@b.test", "alice@a.test", stdin=stdin)
    assert result.returncode == 0, result.stderr
    for raw in b.wait_for_messages("bob@b.test", 2) + a.wait_for_messages("alice@a.test", 2):
        head, _, body = raw.partition(b"\r\n\r\n")
        # A header field named Bcc, not the letters anywhere: a DKIM signature's base64 may hold "bcc".
        names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
        assert b"bcc" not in names and b"secret@elsewhere.test" not in raw, raw
        assert b"\r\nTo: <bob@b.test>\r\n" in head
        assert body == b"Bcc: this line is the body, and stays\r\n"
    # Nothing left in a's queue that still names the blind recipient in its body either.
    assert {r["recipient"] for r in a.queue()} == {"bob@b.test"}


@pytest.mark.django_db(transaction=True)
def test_the_owner_sees_only_their_own_address_among_the_recipients(mx, server_factory):
    accounts.add_domain("a.test")
    accounts.add_mailbox("alice@a.test", "alice-password")
    accounts.add_mailbox("bob@a.test", "bob-password")
    server = mx()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        # bob is blind-copied: only the envelope names him.
        content = "From: <carol@x.test>\r\nTo: <alice@a.test>\r\nSubject: hi\r\n\r\nhello\r\n"
        smtp.sendmail("carol@x.test", ["alice@a.test", "bob@a.test"], content)
    base = start_web(server_factory)
    for owner, other in (("alice@a.test", "bob@a.test"), ("bob@a.test", "alice@a.test")):
        client = WebClient(base)
        client.sign_in(owner, owner.partition("@")[0] + "-password")
        delivery = Delivery.objects.get(mailbox__address=owner)
        page = client.get(f"/mailbox/message/{delivery.pk}/")
        assert f"<tr><th>RCPT TO</th><td>{owner}</td></tr>" in page
        # The message's own To: header (alice) is part of what both may read; nothing else names the other.
        assert other not in page.replace(f"<th>To</th><td>{other}</td>", ""), page
    # The console (staff) still shows the whole envelope.
    assert Delivery.objects.get(mailbox__address="alice@a.test").message.rcpt_tos == ["alice@a.test", "bob@a.test"]
