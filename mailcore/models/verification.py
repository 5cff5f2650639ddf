"""Reverse delivery (reverse-delivery.md): announcements we received, messages we sourced."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class AnnouncementState(models.TextChoices):
    PENDING = "pending", "pending"
    VERIFIED = "verified", "verified"
    UNVERIFIED = "unverified", "pulled, not aligned"
    FAILED = "failed", "failed"


class Announcement(models.Model):
    """A `SOURCE <id>` we accepted (spec §5.1): a promise of a body to pull from the sender's MX."""

    source_id = models.CharField(max_length=32, db_index=True)
    mail_from = models.CharField(max_length=320)
    sender_domain = models.CharField(max_length=253)
    rcpt_tos = models.JSONField(default=list, help_text="The recipients accepted with it; the only ones delivered to.")
    client_address = models.CharField(max_length=64)
    helo_name = models.CharField(max_length=255)
    received_at = models.DateTimeField(auto_now_add=True)
    state = models.CharField(max_length=10, choices=AnnouncementState.choices, default=AnnouncementState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    origin_host = models.CharField(max_length=255, blank=True, help_text="The origin MX the body was pulled from.")
    completed_at = models.DateTimeField(null=True, blank=True)
    message = models.ForeignKey("mailcore.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="announcements")

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="announcement_due"),
            models.Index(fields=["state", "sender_domain"], name="announcement_by_domain"),
            models.Index(fields=["state", "client_address"], name="announcement_by_client"),
        ]

    def __str__(self) -> str:
        return f"{self.source_id} from <{self.mail_from}> ({self.state})"


class SourcedMessage(models.Model):
    """A message we announced with SOURCE and serve to GET until it expires (spec §3, §4)."""

    source_id = models.CharField(max_length=32, unique=True)
    message = models.ForeignKey("mailcore.Message", on_delete=models.PROTECT, related_name="sourced")
    mail_from = models.CharField(max_length=320)
    rcpt_tos = models.JSONField(default=list)
    destination_host = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    first_fetch_at = models.DateTimeField(null=True, blank=True)
    first_fetch_address = models.CharField(max_length=64, blank=True)
    last_fetch_at = models.DateTimeField(null=True, blank=True)
    last_fetch_address = models.CharField(max_length=64, blank=True)
    fetch_count = models.PositiveIntegerField(default=0)
    expired = models.BooleanField(default=False, help_text="Retention ended; the body is released.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.source_id} to {self.destination_host}"


class SourcePin(models.Model):
    """A sender domain that we verified a message from by SOURCE (spec §5.8, the downgrade memory).

    While it is remembered (MAIL_SOURCE_PIN_DAYS after `last_verified_at`), plain DATA mail with
    a reverse-path in it is a likely forgery by downgrade: quarantined, or refused under `reject`.
    """

    domain = models.CharField(max_length=253, unique=True, help_text="The reverse-path domain, lower-case.")
    first_verified_at = models.DateTimeField(auto_now_add=True)
    last_verified_at = models.DateTimeField(db_index=True)
    verified_count = models.PositiveIntegerField(default=0, help_text="Messages verified from it since first seen.")

    class Meta:
        ordering = ["domain"]
        verbose_name = "sender domain delivering by SOURCE"
        verbose_name_plural = "sender domains delivering by SOURCE"

    def __str__(self) -> str:
        return self.domain
