"""Stored messages (one body however many recipients) and their per-mailbox deliveries."""

from __future__ import annotations

import secrets

from django.db import models

from mailcore.envelope import Transport, Verification


def new_queue_id() -> str:
    """A short, unique, log-friendly id, like Postfix's queue ids."""
    return secrets.token_hex(8).upper()


def new_uid() -> str:
    """A POP3 unique-id (RFC 1939 §7): printable, never reused, never changed."""
    return secrets.token_hex(12)


class SpamStatus(models.TextChoices):
    """Whether spamd scored a message."""

    SCORED = "scored", "scored"
    UNSCORED = "unscored", "unscored: spamd down or too slow"
    SKIPPED = "skipped", "not checked"


class Message(models.Model):
    queue_id = models.CharField(max_length=32, unique=True, default=new_queue_id)
    body_ref = models.CharField(max_length=255, help_text="The body's name in the message store.")
    size = models.BigIntegerField(help_text="Octets of the stored body, trace headers included.")
    sha256 = models.CharField(max_length=64)
    mail_from = models.CharField(max_length=320, blank=True, help_text="The reverse-path; empty for <>.")
    rcpt_tos = models.JSONField(default=list, help_text="The envelope recipients as given.")
    client_address = models.CharField(max_length=64, blank=True)
    helo_name = models.CharField(max_length=255, blank=True)
    tls = models.BooleanField(default=False)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    transport = models.CharField(max_length=12, choices=Transport.choices)
    verification = models.CharField(max_length=14, choices=Verification.choices, db_index=True)
    auth_results = models.TextField(blank=True, help_text="The Authentication-Results header we added.")
    auth_methods = models.JSONField(
        default=dict, blank=True, help_text="Each method's result (spf, dkim, dmarc, arc), as in Authentication-Results."
    )
    subject = models.CharField(max_length=255, blank=True)
    header_from = models.CharField(max_length=320, blank=True)
    pop3_size = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Octets as POP3 sends the body (bare LF counted as CRLF, RFC 1939 §11); computed on first listing.",
    )
    spam_status = models.CharField(
        max_length=10,
        choices=SpamStatus.choices,
        default=SpamStatus.SKIPPED,
        help_text="unscored: spamd down or slow; skipped: check off or not applicable.",
    )
    spam_score = models.FloatField(null=True, blank=True, help_text="The SpamAssassin score, when scored.")
    spam_rules = models.JSONField(default=list, blank=True, help_text="The SpamAssassin rules that hit, when scored.")
    forwarded_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="forwarded_copies",
        help_text="For the copy an alias sends on to remote targets: the message as received.",
    )

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.queue_id} from <{self.mail_from}>"


class DeliveryState(models.TextChoices):
    INBOX = "inbox", "inbox"
    QUARANTINED = "quarantined", "quarantined"
    DELETED = "deleted", "deleted"


class Delivery(models.Model):
    """One message in one mailbox."""

    # No index of their own: "delivery_once_per_mailbox" (message, mailbox) and "delivery_maildrop"
    # (mailbox, state, id) begin with them and serve every lookup by either. Each index is one
    # more page written per commit.
    message = models.ForeignKey(Message, on_delete=models.PROTECT, related_name="deliveries", db_index=False)
    mailbox = models.ForeignKey("mailcore.Mailbox", on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    uid = models.CharField(max_length=70, unique=True, default=new_uid, help_text="The POP3 UIDL.")
    state = models.CharField(max_length=12, choices=DeliveryState.choices, default=DeliveryState.INBOX)
    reason = models.CharField(max_length=255, blank=True, help_text="Why it was quarantined.")
    delivered_at = models.DateTimeField(auto_now_add=True)
    changed_at = models.DateTimeField(auto_now=True)
    retrieved_at = models.DateTimeField(null=True, blank=True, help_text="First POP3 retrieval.")

    class Meta:
        ordering = ["delivered_at", "id"]
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["mailbox", "state", "id"], name="delivery_maildrop")]
        constraints = [models.UniqueConstraint(fields=["message", "mailbox"], name="delivery_once_per_mailbox")]

    def __str__(self) -> str:
        return f"{self.message.queue_id} -> {self.mailbox} ({self.state})"
