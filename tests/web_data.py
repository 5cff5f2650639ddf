"""Realistic rows for the web UI's tests and screenshots, made through the services as the engines would."""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage

from django.contrib.auth.models import Permission, User
from django.utils import timezone

from mailcore.models import Announcement, AnnouncementState, Message, QueueItem, QueueState, Transport, Verification
from mailcore.services import accounts
from mailcore.services.inbound import Envelope, receive

PASSWORD = "correct horse battery staple 7"


def make_accounts() -> None:
    """a.test quarantines unverified mail, b.test accepts it; alice and bob share a.test."""
    accounts.add_domain("a.test", "quarantine")
    accounts.add_domain("b.test", "accept")
    for address in ("alice@a.test", "bob@a.test", "carol@b.test"):
        accounts.add_mailbox(address, PASSWORD)


def make_users() -> dict[str, User]:
    superuser = User.objects.create_superuser("root", "root@example.test", PASSWORD)
    staff = User.objects.create_user("staff", password=PASSWORD, is_staff=True)
    viewer = User.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(content_type__app_label="mailcore", codename__startswith="view_"))
    return {"superuser": superuser, "staff": staff, "viewer": viewer}


def content(subject: str, sender: str = "news@forger.example", to: str = "alice@a.test", *, html: str | None = None,
            attachment: bytes | None = None, text: str = "Hello,\n\nthe quarterly figures are attached.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Sender <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{abs(hash(subject))}@forger.example>"
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="figures.pdf")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def unverified(to: str, subject: str, sender: str = "news@forger.example", **kwargs) -> Message:
    """Mail by plain DATA from a client we know nothing about: a.test's policy quarantines it."""
    envelope = Envelope(mail_from=sender, rcpt_tos=[to], client_address="192.0.2.66", helo_name="mail.forger.example")
    return receive(envelope, content(subject, sender, to, **kwargs)).message


def verified(to: str, subject: str, sender: str = "alice@origin.test", **kwargs) -> Message:
    """Mail announced by SOURCE and pulled back from the sender's MX, with its announcement row."""
    envelope = Envelope(
        mail_from=sender, rcpt_tos=[to], client_address="192.0.2.10", helo_name="mx.origin.test", transport=Transport.SOURCE,
        verification=Verification.VERIFIED, auth_result="pass", auth_comment="retrieved from mx.origin.test [192.0.2.10]",
    )
    message = receive(envelope, content(subject, sender, to, **kwargs)).message
    Announcement.objects.create(
        source_id=message.queue_id.lower().ljust(32, "0"), mail_from=sender, sender_domain=sender.rpartition("@")[2],
        rcpt_tos=[to], client_address="192.0.2.10", helo_name="mx.origin.test", state=AnnouncementState.VERIFIED,
        attempts=1, origin_host="mx.origin.test", completed_at=timezone.now(), message=message,
    )
    return message


def forged(claimed: str = "ceo@bank.example", client: str = "203.0.113.9") -> Announcement:
    return Announcement.objects.create(
        source_id="f" * 32, mail_from=claimed, sender_domain=claimed.rpartition("@")[2], rcpt_tos=["alice@a.test"],
        client_address=client, helo_name="bank.example", state=AnnouncementState.FAILED, attempts=1,
        last_error="550 5.1.0 unknown id", completed_at=timezone.now(),
    )


def pending(claimed: str = "info@slow.example") -> Announcement:
    return Announcement.objects.create(
        source_id="p" * 32, mail_from=claimed, sender_domain=claimed.rpartition("@")[2], rcpt_tos=["bob@a.test"],
        client_address="198.51.100.4", helo_name="mx.slow.example", attempts=2, last_error="451 4.3.0 try later",
        next_attempt_at=timezone.now() + timedelta(minutes=5),
    )


def queued(message: Message, recipient: str = "dave@remote.example", state: str = QueueState.DEFERRED) -> QueueItem:
    return QueueItem.objects.create(
        message=message, recipient=recipient, domain=recipient.rpartition("@")[2], state=state, attempts=3,
        next_attempt_at=timezone.now() + timedelta(minutes=30), last_reply="451 4.7.1 greylisted, try again later",
        remote_host="mx.remote.example",
    )
