"""The queue runner: delivers the due items of one destination domain, then records every result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections

from mailcore.delivery.client import OutboundClient, OutboundMessage, RecipientResult
from mailcore.delivery.mx import MXResolver, RoutingError
from mailcore.headers import strip_return_path
from mailcore.models import QueueItem
from mailcore.services import outbound
from mailcore.store import message_store
from mailcore.workers.sourcing_client import SourcingClient

log = logging.getLogger("mailcore.delivery")

# RFC 5321 §4.5.3.1.8: a server must take at least 100 recipients per transaction.
MAX_RECIPIENTS_PER_TRANSACTION = 100
# A django-q2 task is killed after Q_CLUSTER["timeout"] (300 s): stop starting new work well before.
RUN_BUDGET_SECONDS = 200.0


def default_client() -> OutboundClient:
    """The client of a queue run: it announces with SOURCE where it can unless MAIL_USE_SOURCE is off."""
    client_class = SourcingClient if settings.MAIL_USE_SOURCE else OutboundClient
    return client_class(
        settings.MAIL_HOSTNAME,
        settings.MAIL_REMOTE_SMTP_PORT,
        connect_timeout=settings.MAIL_SMTP_CONNECT_TIMEOUT,
        timeout=settings.MAIL_SMTP_CLIENT_TIMEOUT,
        source_address=settings.MAIL_SMTP_SOURCE_ADDRESS or None,
    )


class DomainRun:
    """One pass over a destination domain: resolve once, one connection per host, every due item."""

    def __init__(
        self,
        domain: str,
        *,
        resolver_factory: Callable[[], MXResolver] = MXResolver,
        client_factory: Callable[[], OutboundClient] = default_client,
        budget: float = RUN_BUDGET_SECONDS,
    ):
        self.domain = domain
        self.resolver_factory = resolver_factory
        self.client_factory = client_factory
        self.budget = budget

    def run(self) -> outbound.RunCounts:
        counts = outbound.RunCounts()
        started = time.monotonic()
        while time.monotonic() - started < self.budget:
            items = outbound.claim_due(self.domain)
            if not items:
                break
            remaining = max(1.0, self.budget - (time.monotonic() - started))
            counts.add(outbound.record_attempt(items, self.attempt(items, remaining)))
            if len(items) < outbound.CLAIM_BATCH:
                break
        return counts

    def attempt(self, items: list[QueueItem], time_limit: float) -> dict[int, outbound.Outcome]:
        """Try every claimed item once; an outcome for each, whatever happens."""
        messages, owners, outcomes = self.prepare(items)
        if messages:
            try:
                results = asyncio.run(asyncio.wait_for(self.deliver(messages), time_limit))
            except TimeoutError:
                results = {}
                log.warning("delivery to %s stopped after %.0f s", self.domain, time_limit)
            for key, rcpts in owners.items():
                got = {r.recipient: r for r in results.get(key, [])}
                for rcpt, item in rcpts:
                    result = got.get(rcpt) or RecipientResult(rcpt, "delivery attempt took too long", "4.4.7")
                    outcomes[item.pk] = outbound.Outcome(
                        rcpt, result.reply, result.status, result.delivered, result.permanent, result.how, result.remote_host
                    )
        return outcomes

    def prepare(self, items: list[QueueItem]):
        """Read each message once (before the event loop starts: file reads block) and split big envelopes."""
        messages: list[OutboundMessage] = []
        owners: dict[str, list[tuple[str, QueueItem]]] = {}
        outcomes: dict[int, outbound.Outcome] = {}
        by_message: dict[int, list[QueueItem]] = {}
        for item in items:
            by_message.setdefault(item.message_id, []).append(item)
        store = message_store()
        for group in by_message.values():
            message = group[0].message
            try:
                content = strip_return_path(store.read(message.body_ref))
            except OSError as exc:
                for item in group:
                    outcomes[item.pk] = outbound.Outcome(item.recipient, f"local error: body unavailable: {exc}", "4.3.0")
                continue
            for start in range(0, len(group), MAX_RECIPIENTS_PER_TRANSACTION):
                chunk = group[start : start + MAX_RECIPIENTS_PER_TRANSACTION]
                key = f"{message.queue_id}/{start}"
                messages.append(
                    OutboundMessage(
                        key, message.mail_from, [i.recipient for i in chunk], content, message.pk, outbound.may_source(message)
                    )
                )
                owners[key] = [(i.recipient, i) for i in chunk]
        return messages, owners, outcomes

    async def deliver(self, messages: list[OutboundMessage]) -> dict[str, list[RecipientResult]]:
        try:
            hosts = await self.resolver_factory().hosts(self.domain)
        except RoutingError as exc:
            return {
                m.queue_id: [RecipientResult(r, exc.reason, exc.status, permanent=exc.permanent) for r in m.recipients]
                for m in messages
            }
        return await self.client_factory().deliver(hosts, messages)


def deliver_domain(domain: str) -> outbound.RunCounts:
    """Deliver what is due for `domain` now (the django-q2 task and `flushq` call this)."""
    # A long-lived worker process: drop a connection that went stale since the last task.
    close_old_connections()
    try:
        counts = DomainRun(domain).run()
    finally:
        close_old_connections()
    if counts.sent or counts.deferred or counts.bounced:
        log.info("run for %s: %d sent, %d deferred, %d bounced", domain, counts.sent, counts.deferred, counts.bounced)
    return counts
