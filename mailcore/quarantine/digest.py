"""Quarantine digests: a mail to each mailbox with newly held mail, one line a message, with signed links.

A mailbox gets a digest when mail was held for it since its last digest, and at most every
MAIL_DIGEST_INTERVAL seconds (a django-q2 schedule calls `send_due`). The digest lists
everything still held, newest first: sender, subject, date, why it is held in plain words, when
retention deletes it, and links to release, delete or always allow the sender.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone

from mailcore.models import Delivery, Mailbox, QuarantineDigest
from mailcore.quarantine import links
from mailcore.services import digests, quarantine

log = logging.getLogger("mailcore.quarantine")


def why_held(delivery) -> str:
    """The reason a message is held, as its owner would say it."""
    reason = delivery.reason
    message = delivery.message
    if reason == "spam":
        score = f" (score {message.spam_score:.1f})" if message.spam_score is not None else ""
        return f"it looks like spam{score}"
    if reason == "unverified":
        return "its sender could not be verified, and your domain holds unverified mail"
    if reason == "downgrade":
        return "its sender's domain usually proves its mail, but this message came without that proof"
    if reason.startswith("dmarc"):
        return "it fails the sender domain's DMARC check"
    if reason == "blocked sender":
        return "its sender is on your block list (other recipients accepted it)"
    return reason or "held by the server's policy"


@dataclass(frozen=True)
class Line:
    delivery: Delivery
    why: str
    goes_at: object  # a datetime
    release_url: str
    delete_url: str
    allow_url: str
    new: bool

    @property
    def sender(self) -> str:
        m = self.delivery.message
        return m.header_from or m.mail_from or "(no sender)"


@dataclass
class Digest:
    mailbox: Mailbox
    lines: list[Line]

    @property
    def newest_id(self) -> int:
        return max((line.delivery.pk for line in self.lines), default=0)

    def context(self) -> dict:
        return {
            "mailbox": self.mailbox,
            "lines": self.lines,
            "new_count": sum(line.new for line in self.lines),
            "sign_in_url": settings.MAIL_WEB_URL + "/mailbox/",
            "retention_days": f"{settings.MAIL_QUARANTINE_RETENTION_DAYS:g}",
        }

    def text(self) -> str:
        return render_to_string("quarantine/digest.txt", self.context())

    def html(self) -> str:
        return render_to_string("quarantine/digest.html", self.context())

    def subject(self) -> str:
        held = len(self.lines)
        return f"Quarantine: {held} message{'s' if held != 1 else ''} held for {self.mailbox.address}"

    def email(self) -> bytes:
        msg = EmailMessage()
        msg["From"] = f"Quarantine <postmaster@{self.mailbox.domain.name}>"
        msg["To"] = self.mailbox.address
        msg["Subject"] = self.subject()
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=settings.MAIL_HOSTNAME)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no vacation replies to it
        msg.set_content(self.text())
        msg.add_alternative(self.html(), subtype="html")
        return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def build(mailbox: Mailbox, since_id: int = 0) -> Digest:
    """The digest of everything held for `mailbox`; lines above `since_id` are marked new."""
    lines = [
        Line(
            delivery=d,
            why=why_held(d),
            goes_at=links.expires_at(d),
            release_url=links.url(d, "release"),
            delete_url=links.url(d, "delete"),
            allow_url=links.url(d, "allow"),
            new=d.pk > since_id,
        )
        for d in quarantine.held(mailbox)
    ]
    return Digest(mailbox, lines)


def send(mailbox: Mailbox, state: QuarantineDigest | None) -> Digest:
    """Mail the digest to `mailbox` and remember what it listed."""
    digest = build(mailbox, state.last_held_id if state else 0)
    digests.send_digest(mailbox, digest.email(), digest.newest_id)
    log.info("quarantine digest to %s: %d held, %d new", mailbox.address, len(digest.lines), sum(x.new for x in digest.lines))
    return digest


def send_due(interval: int | None = None, force: bool = False) -> list[str]:
    """Mail each mailbox with newly held mail its digest, unless it had one within `interval` seconds."""
    interval = settings.MAIL_DIGEST_INTERVAL if interval is None else interval
    if interval <= 0 and not force:
        return []
    now = timezone.now()
    sent = []
    for mailbox, state in digests.mailboxes_with_new_held_mail():
        if not force and state is not None and state.last_sent_at > now - timedelta(seconds=interval):
            continue
        send(mailbox, state)
        sent.append(mailbox.address)
    return sent
