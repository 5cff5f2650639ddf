"""Failures counted per client address (failed logins, unknown GET ids), shared by every process and node."""

from __future__ import annotations

from django.db import models


class FailureCount(models.Model):
    """How many failures one client address made in one time bucket of one counter.

    A row, not a cache entry: `UPDATE ... SET count = count + 1` is atomic on every database, so
    a count can be reserved before the work it limits (a password check) and parallel attempts
    never all pass the limit together.
    """

    key = models.CharField(max_length=100, unique=True, help_text="scope:address digest:bucket.")
    count = models.IntegerField(default=0)
    expires_at = models.DateTimeField(db_index=True, help_text="When the bucket stops counting.")

    def __str__(self) -> str:
        return f"{self.key}: {self.count}"
