"""What a session knows about a message besides its content, and the Message row it is recorded as.

How a message reached us (`Transport`) and how its sender was verified (`Verification`) are values
of the envelope, kept here and stored by the models (which import them from here, never the reverse)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:
    from mailcore.authentication.results import Authentication
    from mailcore.store import StoredBody


class Transport(models.TextChoices):
    """How a message reached us."""

    DATA = "data", "SMTP DATA"
    SOURCE = "source", "SOURCE / GET"
    SUBMISSION = "submission", "authenticated submission"
    LOCAL = "local", "local (sendmail, bounce)"


class Verification(models.TextChoices):
    VERIFIED = "verified", "verified"
    AUTHENTICATED = "authenticated", "authenticated"  # DMARC pass (RFC 7489), without a verified SOURCE
    UNVERIFIED = "unverified", "unverified"
    PENDING = "pending", "pending"
    FAILED = "failed", "failed"


@dataclass
class Envelope:
    """What the SMTP session (or the pull) knows about a message besides its content."""

    mail_from: str
    rcpt_tos: list[str]
    client_address: str = ""
    client_name: str = ""  # reverse DNS, when known
    helo_name: str = ""
    tls: bool = False
    tls_cipher: str = ""  # e.g. "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384", for the Received comment
    transport: str = Transport.DATA
    protocol: str = "ESMTP"  # RFC 3848: ESMTP, ESMTPS, ESMTPA, ESMTPSA
    verification: str = Verification.UNVERIFIED
    # The x-source result and its comment for Authentication-Results (RFC 8601 §2.2).
    auth_result: str = "none"
    auth_comment: str = ""
    reject_policy_applies: bool = True
    spam_result: str = ""  # the x-spam resinfo for Authentication-Results, set by receive
    # SPF, DKIM, DMARC and ARC results (`authenticate`); None when not checked (local mail, checks off).
    authentication: Authentication | None = None


def message_row(
    envelope: Envelope,
    body: StoredBody,
    queue_id: str,
    *,
    subject: str,
    header_from: str,
    auth_results: str = "",
    auth_methods: dict | None = None,
    spam_fields: dict | None = None,
    forwarded_from_id: int | None = None,
) -> dict:
    """The values (by attname) of the Message row that records `body`, taken in with `envelope`.

    Fields left out (received_at, pop3_size, the spam fields without `spam_fields`) get their
    defaults from whoever inserts the row.
    """
    row = {
        "queue_id": queue_id,
        "body_ref": body.ref,
        "size": body.size,
        "sha256": body.sha256,
        "mail_from": envelope.mail_from,
        "rcpt_tos": list(envelope.rcpt_tos),
        "client_address": envelope.client_address,
        "helo_name": envelope.helo_name,
        "tls": envelope.tls,
        "transport": envelope.transport,
        "verification": envelope.verification,
        "auth_results": auth_results,
        "auth_methods": auth_methods if auth_methods is not None else {},
        "subject": subject,
        "header_from": header_from,
        "forwarded_from_id": forwarded_from_id,
    }
    if spam_fields:
        row.update(spam_fields)
    return row
