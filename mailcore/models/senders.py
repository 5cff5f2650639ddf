"""Sender allow and block lists: patterns that an administrator or a mailbox owner set per scope."""

from __future__ import annotations

from django.db import models


class SenderAction(models.TextChoices):
    ALLOW = "allow", "allow"
    BLOCK = "block", "block"


class SenderScope(models.TextChoices):
    """Where an entry applies; the narrower scope wins (operations.md, `sender`)."""

    GLOBAL = "global", "every local domain"
    DOMAIN = "domain", "one domain"
    MAILBOX = "mailbox", "one mailbox"


class SenderRule(models.Model):
    """One `manage.py sender allow|block PATTERN [--for ...]` entry."""

    action = models.CharField(max_length=5, choices=SenderAction.choices)
    pattern = models.CharField(
        max_length=320,
        help_text="user@example.org, @example.org (with its subdomains), 192.0.2.7 or 192.0.2.0/24, 2001:db8::/32.",
    )
    scope = models.CharField(max_length=7, choices=SenderScope.choices, default=SenderScope.GLOBAL)
    domain = models.ForeignKey("mailcore.Domain", null=True, blank=True, on_delete=models.CASCADE, related_name="sender_rules")
    mailbox = models.ForeignKey("mailcore.Mailbox", null=True, blank=True, on_delete=models.CASCADE, related_name="sender_rules")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True, help_text="Who added it (as in the audit log).")

    class Meta:
        ordering = ["scope", "pattern"]
        verbose_name = "sender allow/block entry"
        verbose_name_plural = "sender allow/block list"
        # One entry per pattern and scope (allowing what is blocked there replaces the entry); one
        # constraint per scope, since NULL domain or mailbox columns never collide in a unique index.
        constraints = [
            models.UniqueConstraint(fields=["pattern"], condition=models.Q(scope="global"), name="sender_rule_once_globally"),
            models.UniqueConstraint(
                fields=["pattern", "domain"], condition=models.Q(scope="domain"), name="sender_rule_once_per_domain"
            ),
            models.UniqueConstraint(
                fields=["pattern", "mailbox"], condition=models.Q(scope="mailbox"), name="sender_rule_once_per_mailbox"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.pattern} for {self.scope_name}"

    @property
    def scope_name(self) -> str:
        if self.scope == SenderScope.MAILBOX:
            return self.mailbox.address
        if self.scope == SenderScope.DOMAIN:
            return self.domain.name
        return "all domains"
