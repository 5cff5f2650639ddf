"""django-q2 entry points: thin, taking plain values, each calling one service."""

from __future__ import annotations

import logging

log = logging.getLogger("mailcore.tasks")


def enqueue_delivery(domain: str) -> None:
    """Start delivering the due queue items of one destination domain (filled in by the outbound issue)."""
    log.debug("delivery for %s requested; the outbound engine is not built yet", domain)


def enqueue_pull(sender_domain: str) -> None:
    """Ask the cluster to pull the pending announcements of one sender domain now (spec §5.2)."""
    from django_q.tasks import async_task

    async_task("mailcore.tasks.pull_domain", sender_domain, group="pull", task_name=f"pull {sender_domain}"[:100])


def pull_domain(sender_domain: str) -> None:
    """Task: pull the pending announcements of `sender_domain` (the GET client fills this in)."""
    log.info("pull for %s requested; the GET client is not built yet, the sweep will retry", sender_domain)
