"""django-q2 entry points: thin, taking plain values, each calling one service."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import close_old_connections
from django_q.models import Schedule

from mailcore import jobs
from mailcore.quarantine.digest import send_due
from mailcore.services import outbound, quarantine, reverse_delivery
from mailcore.services.bodies import collect_orphans
from mailcore.workers import outbound_queue
from mailcore.workers.pull_sweep import run_sweep

log = logging.getLogger("mailcore.tasks")

# The schedule of the pull sweep (mailcore.workers.pull_sweep): announcements due for a retry,
# and those too old to keep trying.
PULL_SWEEP_SCHEDULE = "mailcore callback sweep"
# The schedule that picks up deferred outbound items; registered by name, idempotently.
QUEUE_SWEEP_SCHEDULE = "mailcore outbound queue sweep"
# The schedule that ends the retention of sourced messages (reverse-delivery.md §3 rule 5).
SOURCE_EXPIRY_SCHEDULE = "mailcore sourced message expiry"
# The schedule that removes bodies no message refers to (mailcore.services.bodies).
STORE_GC_SCHEDULE = "mailcore body store gc"
# The schedules of the quarantine: digests to mailboxes with newly held mail, and its retention.
DIGEST_SCHEDULE = "mailcore quarantine digests"
RETENTION_SCHEDULE = "mailcore quarantine retention"


def deliver_domain(domain: str) -> dict:
    """Task: one delivery run for `domain` (two workers on one domain never share an item)."""
    counts = outbound_queue.deliver_domain(domain)
    return {"sent": counts.sent, "deferred": counts.deferred, "bounced": counts.bounced}


def deliver_due() -> list[str]:
    """Scheduled task: one delivery task per destination domain that has items due now."""
    domains = outbound.due_domains()
    for domain in domains:
        jobs.enqueue_delivery(domain)
    return domains


def register_schedules() -> None:
    """Create or update the periodic schedules (pull sweep, queue sweep, sourced expiry, store GC,
    quarantine digests and retention), idempotently.

    Safe to run any number of times (after every migrate).

    `schedule()` raises on a duplicate name, so the row is written with update_or_create. The
    scheduler wakes every 30 s, so the sweep's granularity is a minute at best: fast reactions
    (a message just queued) are tasks enqueued on commit, not this schedule; each item keeps its
    own due time (`next_attempt_at`) and is retried at the first sweep after it.
    """
    periodic = [
        # No schedule runs more often than once a minute, so the pull sweep runs every
        # max(1, MAIL_CALLBACK_INTERVAL / 60) minutes. Each announcement keeps its own retry time
        # (`next_attempt_at`), taken at the first sweep after it is due; the first attempt is a
        # task enqueued when SOURCE is committed, not a sweep.
        (PULL_SWEEP_SCHEDULE, "mailcore.tasks.sweep", -(-settings.MAIL_CALLBACK_INTERVAL // 60)),
        (QUEUE_SWEEP_SCHEDULE, "mailcore.tasks.deliver_due", settings.MAIL_QUEUE_SWEEP_MINUTES),
        (SOURCE_EXPIRY_SCHEDULE, "mailcore.tasks.expire_sourced", settings.MAIL_SOURCE_EXPIRY_MINUTES),
        (STORE_GC_SCHEDULE, "mailcore.tasks.collect_orphaned_bodies", settings.MAIL_STORE_GC_MINUTES),
        # Each mailbox's MAIL_DIGEST_INTERVAL is kept by the task; the schedule only looks often
        # enough for it (every 15 minutes at most: each look scans the held deliveries).
        (DIGEST_SCHEDULE, "mailcore.tasks.send_digests", min(15, settings.MAIL_DIGEST_INTERVAL // 60) or 15),
        (RETENTION_SCHEDULE, "mailcore.tasks.expire_quarantine", 60),
    ]
    for name, func, minutes in periodic:
        Schedule.objects.update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": max(1, minutes), "repeats": -1},
        )


def pull_domain(sender_domain: str) -> str:
    """Task: pull the due announcements of `sender_domain` now, one connection per origin host."""
    return run_sweep([sender_domain]).summary()


def sweep() -> str:
    """Scheduled task (PULL_SWEEP_SCHEDULE): pull what is due, fail what is too old."""
    return run_sweep().summary()


def expire_sourced() -> str:
    """Scheduled task: end the retention of sourced messages; notify local senders of unfetched ones."""
    close_old_connections()
    return reverse_delivery.expire_sourced().summary()


def collect_orphaned_bodies() -> str:
    """Scheduled task: remove bodies older than MAIL_STORE_GC_GRACE that no message refers to."""
    close_old_connections()
    return collect_orphans().summary()


def send_digests() -> list[str]:
    """Scheduled task: a quarantine digest to each mailbox with newly held mail, at most every MAIL_DIGEST_INTERVAL."""
    close_old_connections()
    return send_due()


def expire_quarantine() -> int:
    """Scheduled task: delete held mail older than MAIL_QUARANTINE_RETENTION_DAYS."""
    close_old_connections()
    return quarantine.expire_held()
