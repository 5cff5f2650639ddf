"""When each mailbox was last sent its quarantine digest."""

from __future__ import annotations

from django.db import models


class QuarantineDigest(models.Model):
    """A mailbox gets a digest when mail was held since `last_sent_at`, at most every MAIL_DIGEST_INTERVAL."""

    mailbox = models.OneToOneField("mailcore.Mailbox", on_delete=models.CASCADE, related_name="digest")
    last_sent_at = models.DateTimeField(help_text="When the last digest was mailed.")
    last_held_id = models.BigIntegerField(default=0, help_text="The newest held delivery that digest listed.")

    class Meta:
        verbose_name = "quarantine digest"

    def __str__(self) -> str:
        return f"{self.mailbox}: last digest {self.last_sent_at:%Y-%m-%d %H:%M}"
