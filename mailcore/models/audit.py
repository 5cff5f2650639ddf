"""The audit log: who changed what in the quarantine, the sender lists, policies and passwords."""

from __future__ import annotations

from django.db import models


class ActorKind(models.TextChoices):
    ADMIN = "admin", "administrator"
    OWNER = "owner", "mailbox owner"
    LINK = "link", "digest link"
    CLI = "cli", "command line"
    SYSTEM = "system", "the server"


class AuditAction(models.TextChoices):
    RELEASE = "release", "release"
    DELETE = "delete", "delete"
    DELETE_AS_SPAM = "delete-spam", "delete as spam"
    EXPIRE = "expire", "expired from quarantine"
    SENDER_ALLOW = "sender-allow", "sender allowed"
    SENDER_BLOCK = "sender-block", "sender blocked"
    SENDER_REMOVE = "sender-remove", "sender entry removed"
    POLICY = "policy", "policy change"
    PASSWORD = "password", "password change"


class AuditEntry(models.Model):
    """One action. Plain text, no foreign keys: an entry outlives the message, mailbox or user it names."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_kind = models.CharField(max_length=8, choices=ActorKind.choices)
    actor = models.CharField(max_length=200, help_text="The user, the mailbox, or the digest link's id.")
    client_address = models.CharField(max_length=64, blank=True, help_text="Where the request came from.")
    action = models.CharField(max_length=16, choices=AuditAction.choices, db_index=True)
    mailbox = models.CharField(max_length=320, blank=True, db_index=True, help_text="The mailbox concerned, if any.")
    target = models.CharField(max_length=400, help_text="What was acted on: a message, a pattern, a domain.")
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target}"
