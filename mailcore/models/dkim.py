"""DKIM keys of the local domains: the private half signs outgoing mail, the public half is published."""

from __future__ import annotations

from django.db import models


class DKIMKeyState(models.TextChoices):
    ACTIVE = "active", "active: signs outgoing mail"
    RETIRED = "retired", "retired: no longer signs, still published until withdrawn"


class DKIMKey(models.Model):
    """One selector of one domain (RFC 6376 §3.1).

    The private key lives in the database, which only the server's account can read; it is
    never shown in the admin or the web UI.
    """

    domain = models.ForeignKey("mailcore.Domain", on_delete=models.CASCADE, related_name="dkim_keys")
    selector = models.CharField(max_length=63)
    algorithm = models.CharField(max_length=10, help_text="rsa or ed25519 (the k= of the key record).")
    private_key = models.TextField(editable=False)
    public_key = models.TextField(help_text="The p= of the key record, base64.")
    state = models.CharField(max_length=10, choices=DKIMKeyState.choices, default=DKIMKeyState.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["domain", "created_at", "id"]
        verbose_name = "DKIM key"
        constraints = [models.UniqueConstraint(fields=["domain", "selector"], name="dkim_selector_once_per_domain")]

    def __str__(self) -> str:
        return f"{self.selector}._domainkey.{self.domain.name} ({self.algorithm}, {self.state})"
