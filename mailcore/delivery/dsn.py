"""Delivery status notifications: bounces and delay warnings as RFC 3464 multipart/report messages."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, make_msgid

from django.conf import settings
from django.utils import timezone

# The original message's header section is returned, not its body (RFC 3462 text/rfc822-headers):
# enough to identify it, without sending a large body back.
MAX_RETURNED_HEADERS = 64 * 1024

FAILED = "failed"
DELAYED = "delayed"


@dataclass
class RecipientStatus:
    """One recipient's line in the report (RFC 3464 §2.3)."""

    recipient: str
    status: str  # RFC 3463, e.g. 5.1.1
    diagnostic: str  # the remote reply or our own reason
    remote_host: str = ""  # "name[address]" of the host that answered, when one did
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


def header_section(content: bytes) -> bytes:
    """The header section of a stored message (up to the empty line), without our Return-Path."""
    end = content.find(b"\r\n\r\n")
    head = content[: end + 2] if end >= 0 else content
    head = head[:MAX_RETURNED_HEADERS]
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"return-path:")).rstrip(b"\r\n") + b"\r\n"


def _one_line(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def _address_type(address: str) -> str:
    # RFC 6533 §3: utf-8 address type for non-ASCII addresses.
    return "rfc822" if address.isascii() else "utf-8"


def build_report(
    kind: str,
    *,
    sender: str,
    queue_id: str,
    arrival: datetime,
    recipients: list[RecipientStatus],
    original: bytes,
) -> bytes:
    """A complete DSN to `sender` about `recipients` of message `queue_id`, as CRLF octets."""
    hostname = settings.MAIL_HOSTNAME
    now = timezone.now()
    boundary = f"=_report_{secrets.token_hex(12)}"
    if kind == FAILED:
        subject = "Undelivered Mail Returned to Sender"
        intro = (
            f"This is the mail system at {hostname}.\r\n\r\n"
            "Your message could not be delivered to one or more recipients. It has been given up on;\r\n"
            "the reasons are below and in the attached report.\r\n"
        )
    else:
        subject = "Delayed Mail (still being retried)"
        intro = (
            f"This is the mail system at {hostname}.\r\n\r\n"
            "Your message has not been delivered to one or more recipients yet. This is only a\r\n"
            "warning: it will be retried, and you do not need to send it again.\r\n"
        )
    details = []
    for r in recipients:
        details.append(f"<{r.recipient}>: {_one_line(r.diagnostic)}")
        if r.will_retry_until:
            details.append(f"    (retried until {format_datetime(r.will_retry_until)})")
    human = intro + "\r\n" + "\r\n".join(details) + "\r\n"

    # RFC 3464 §2.2: per-message fields, then one block per recipient (§2.3).
    status_lines = [
        f"Reporting-MTA: dns; {hostname}",
        # An extension field (RFC 3464 §2.4); Original-Envelope-Id is for the sender's own ENVID only.
        f"X-Queue-ID: {queue_id}",
        f"Arrival-Date: {format_datetime(arrival)}",
        "",
    ]
    for r in recipients:
        block = [
            f"Final-Recipient: {_address_type(r.recipient)}; {r.recipient}",
            f"Action: {kind}",
            f"Status: {r.status}",
        ]
        if r.remote_host:
            block.append(f"Remote-MTA: dns; {r.remote_host.split('[', 1)[0]}")
        block.append(f"Diagnostic-Code: {'smtp' if r.remote_host else 'x-local'}; {_one_line(r.diagnostic)}")
        block.append(f"Last-Attempt-Date: {format_datetime(r.last_attempt or now)}")
        if r.will_retry_until:
            block.append(f"Will-Retry-Until: {format_datetime(r.will_retry_until)}")
        status_lines.extend(block + [""])
    delivery_status = "\r\n".join(status_lines)

    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {make_msgid(domain=hostname)}",
        # RFC 3834 §5: an automatic message, so that nobody auto-replies to it.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    parts = [
        "\r\n".join(headers),
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "Content-Description: Notification",
        "",
        human,
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        delivery_status,
        f"--{boundary}",
        # RFC 6532 headers with UTF-8 would need message/global-headers; plain ASCII is the common case.
        "Content-Type: text/rfc822-headers" if header_section(original).isascii() else "Content-Type: message/global-headers",
        "Content-Description: Undelivered Message Headers",
        "",
    ]
    text = "\r\n".join(parts).encode("utf-8") + b"\r\n" + header_section(original)
    return text + f"\r\n--{boundary}--\r\n".encode("ascii")
