"""The outbound queue: one row per message and remote recipient."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class QueueState(models.TextChoices):
    QUEUED = "queued", "queued"
    DEFERRED = "deferred", "deferred"
    HELD = "held", "held"
    SENT = "sent", "sent"
    SOURCED = "sourced", "handed over by SOURCE"
    BOUNCED = "bounced", "bounced"


# Items waiting for a delivery attempt.
PENDING_STATES = (QueueState.QUEUED, QueueState.DEFERRED)
# Items not yet over: pending, or held by an operator. Sent, sourced and bounced ones are history.
ACTIVE_STATES = (*PENDING_STATES, QueueState.HELD)


class QueueItem(models.Model):
    message = models.ForeignKey("mailcore.Message", on_delete=models.PROTECT, related_name="queue_items")
    recipient = models.CharField(max_length=320)
    domain = models.CharField(max_length=253, help_text="The recipient's domain: the unit of routing.")
    state = models.CharField(max_length=10, choices=QueueState.choices, default=QueueState.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_reply = models.TextField(blank=True, help_text="The last remote reply or local error.")
    remote_host = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    delay_warned = models.BooleanField(default=False)
    claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A delivery worker holds the item until then; a crashed worker's claim lapses."
    )

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="queue_due"),
            models.Index(fields=["domain", "state"], name="queue_by_domain"),
        ]

    def __str__(self) -> str:
        return f"{self.message.queue_id} -> {self.recipient} ({self.state})"
