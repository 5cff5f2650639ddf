"""django-q2 entry points: thin, taking plain values, each calling one service."""

from __future__ import annotations

import logging

log = logging.getLogger("mailcore.tasks")


def enqueue_delivery(domain: str) -> None:
    """Start delivering the due queue items of one destination domain (filled in by the outbound issue)."""
    log.debug("delivery for %s requested; the outbound engine is not built yet", domain)
