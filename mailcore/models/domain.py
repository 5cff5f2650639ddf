"""Local domains, their mailboxes and aliases: who this server receives mail for."""

from __future__ import annotations

from django.contrib.auth.hashers import check_password, make_password
from django.db import models


class UnverifiedPolicy(models.TextChoices):
    """What becomes of mail that arrived by plain DATA (reverse-delivery.md §5)."""

    ACCEPT = "accept", "accept"
    QUARANTINE = "quarantine", "quarantine"
    REJECT = "reject", "reject"


class AuthenticatedPolicy(models.TextChoices):
    """What becomes of mail that DMARC authenticates but reverse delivery did not verify."""

    VERIFIED = "verified", "as verified: deliver, with the verified spam threshold"
    UNVERIFIED = "unverified", "as unverified: the unverified policy and spam threshold"


class Domain(models.Model):
    name = models.CharField(max_length=253, unique=True, help_text="Lower-case, IDNA-encoded.")
    active = models.BooleanField(default=True)
    unverified_policy = models.CharField(
        max_length=10,
        choices=UnverifiedPolicy.choices,
        default=UnverifiedPolicy.ACCEPT,
        help_text="What to do with mail that arrives by plain DATA instead of a verified SOURCE.",
    )
    authenticated_policy = models.CharField(
        max_length=10,
        choices=AuthenticatedPolicy.choices,
        default=AuthenticatedPolicy.VERIFIED,
        help_text="What to do with mail that passes DMARC (SPF or DKIM aligned with From) but was not verified by SOURCE.",
    )
    # Spam scores: mail from a verified sender gets a lenient threshold, the rest a
    # strict one; at or above its threshold a message is quarantined with reason "spam".
    spam_threshold_verified = models.FloatField(
        default=8.0, help_text="SpamAssassin score at which verified mail is quarantined as spam."
    )
    spam_threshold_unverified = models.FloatField(
        default=3.0, help_text="SpamAssassin score at which unverified mail is quarantined as spam."
    )
    spam_reject_score = models.FloatField(
        null=True,
        blank=True,
        help_text="Score at which spam is refused (550 5.7.1) instead of quarantined; empty: never.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Mailbox(models.Model):
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="mailboxes")
    address = models.CharField(max_length=320, unique=True, help_text="local@domain, lower-case.")
    password = models.CharField(max_length=256, help_text="A Django password hash, never the password.")
    active = models.BooleanField(default=True)
    quota_bytes = models.BigIntegerField(null=True, blank=True, help_text="Bytes; empty or 0: no quota.")
    # Kept as mail is delivered and deleted (mailcore.services.quota), in the same transactions,
    # by `UPDATE ... SET used_bytes = used_bytes + n`: never by walking the store.
    used_bytes = models.BigIntegerField(default=0, editable=False, help_text="Bytes of the mail it holds (inbox and quarantine).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["address"]
        verbose_name_plural = "mailboxes"

    def __str__(self) -> str:
        return self.address

    @property
    def has_quota(self) -> bool:
        return bool(self.quota_bytes and self.quota_bytes > 0)

    def is_full(self) -> bool:
        """RFC 3463 X.2.2: no room left for any message (RCPT is refused with 452 4.2.2)."""
        return self.has_quota and self.used_bytes >= self.quota_bytes

    def set_password(self, raw_password: str) -> None:
        self.password = make_password(raw_password)

    def check_password(self, raw_password: str) -> bool:
        def upgrade(raw: str) -> None:
            self.set_password(raw)
            self.save(update_fields=["password"])

        return check_password(raw_password, self.password, upgrade)


class Alias(models.Model):
    """One source address (or `@domain` for a catch-all) to one target; several rows fan out."""

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="aliases")
    source = models.CharField(max_length=320, db_index=True, help_text="local@domain, or @domain for a catch-all.")
    target = models.CharField(max_length=320, help_text="A local mailbox or a remote address.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["source", "target"]
        verbose_name_plural = "aliases"
        constraints = [models.UniqueConstraint(fields=["source", "target"], name="alias_source_target_unique")]

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


class MailboxLock(models.Model):
    """RFC 1939 §4: one POP3 session holds a maildrop; kept in the database so it spans nodes."""

    mailbox = models.OneToOneField(Mailbox, on_delete=models.CASCADE, related_name="lock")
    holder = models.CharField(max_length=100, help_text="The node and session that hold it.")
    expires_at = models.DateTimeField(help_text="A crashed session's lock lapses here.")

    def __str__(self) -> str:
        return f"{self.mailbox} held by {self.holder}"
