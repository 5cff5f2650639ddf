"""Work handed to the django-q2 cluster. Jobs are named by their entry points' dotted paths
(mailcore.tasks), so the services that ask for work need not import the workers that do it."""

from __future__ import annotations

from django_q.tasks import async_task


def enqueue_delivery(domain: str) -> None:
    """Ask the cluster to deliver the due queue items of one destination domain."""
    async_task("mailcore.tasks.deliver_domain", domain, group="outbound", task_name=f"deliver {domain}"[:100])


def enqueue_pull(sender_domain: str) -> None:
    """Ask the cluster to pull the pending announcements of one sender domain now (spec §5.2)."""
    async_task("mailcore.tasks.pull_domain", sender_domain, group="pull", task_name=f"pull {sender_domain}"[:100])
