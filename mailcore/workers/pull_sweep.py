"""The pull sweep (spec §5.2): per sender domain, pull every due announcement from its origin hosts."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from django.conf import settings

from mailcore.database_bridge import DatabaseBridge
from mailcore.reverse_delivery import origins
from mailcore.reverse_delivery.envelope import envelope_mismatch
from mailcore.reverse_delivery.origins import OriginHost, OriginLookupError
from mailcore.reverse_delivery.pull import Pulled, pull_from_host
from mailcore.services import inbound, pulls
from mailcore.services.pulls import Claim, Outcome

log = logging.getLogger("mailcore.reverse_delivery")

# Sender domains pulled at the same time by one sweep.
DOMAINS_AT_ONCE = 16


@dataclass
class SweepReport:
    """What one sweep did: one outcome per announcement it held, and the connections it opened."""

    outcomes: list[Outcome] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)
    expired: int = 0

    def tally(self) -> Counter:
        return Counter(o.state for o in self.outcomes)

    def summary(self) -> str:
        tally = ", ".join(f"{n} {state}" for state, n in sorted(self.tally().items())) or "nothing was due"
        return f"{tally}; {len(self.connections)} connection(s); {self.expired} expired"


class _Services:
    """The one boundary of the sweep into mailcore.services.pulls.

    The calls run in the thread of the synchronous code that runs the sweep (`run_sweep`), in
    its transaction if it has one (a test's, or a command's atomic block); a sweep outlives many
    units of work, and a connection the database has broken meanwhile is dropped between them.
    """

    def __init__(self):
        services = DatabaseBridge(callers_thread=True)
        self.claim_due = services.wrap(pulls.claim_due)
        self.deliver_pulled = services.wrap(pulls.deliver_pulled)
        self.record_failed = services.wrap(pulls.record_failed)
        self.record_retry = services.wrap(pulls.record_retry)
        self.plan_pull = services.wrap(pulls.plan_pull)


class Sweep:
    def __init__(self, services: _Services | None = None):
        self.services = services or _Services()
        self.report = SweepReport()
        self.host_slots: dict[str, asyncio.Semaphore] = {}
        self.spool_directory = inbound.spool_directory()

    def slot(self, host: OriginHost) -> asyncio.Semaphore:
        """The per-host concurrency limit: however many sender domains share an origin host."""
        if host.address not in self.host_slots:
            self.host_slots[host.address] = asyncio.Semaphore(settings.MAIL_CALLBACK_HOST_CONCURRENCY)
        return self.host_slots[host.address]

    async def run(self, domains: list[str]) -> SweepReport:
        limit = asyncio.Semaphore(DOMAINS_AT_ONCE)

        async def one(domain: str) -> None:
            async with limit:
                await self.pull_domain(domain)

        await asyncio.gather(*(one(d) for d in domains))
        return self.report

    async def pull_domain(self, domain: str) -> None:
        claims = await self.services.claim_due(domain)
        if not claims:
            return
        # Two announcements may carry one id (a sender that reuses ids, or a forger): GET each id
        # once and settle the rest with the same answer.
        waiting = {c.source_id: [x for x in claims if x.source_id == c.source_id] for c in claims}
        deadline = pulls.lease_seconds() * 0.8
        try:
            async with asyncio.timeout(deadline):
                await self._pull(domain, waiting)
        except TimeoutError:
            for source_id in list(waiting):
                await self._settle_retry(waiting.pop(source_id), f"pull of {domain} took longer than {deadline:g} s")

    async def _pull(self, domain: str, waiting: dict[str, list[Claim]]) -> None:
        timeout = settings.MAIL_CALLBACK_TIMEOUT
        try:
            hosts = await origins.origin_hosts(domain)
        except OriginLookupError as exc:
            for source_id in list(waiting):
                claims = waiting.pop(source_id)
                for claim in claims:
                    self.report.outcomes.append(
                        await (self.services.record_failed if exc.permanent else self.services.record_retry)(claim, str(exc))
                    )
            return

        async def on_pulled(pulled: Pulled) -> None:
            for claim in waiting.pop(pulled.source_id, []):
                await self._settle(claim, pulled)

        # Spec §6, Fair pulls: ids of clients with a good record first; the others paced.
        claims = [claim for same_id in waiting.values() for claim in same_id]
        origin = hosts[0].address if hosts else domain
        plan = await self.services.plan_pull(domain, claims, {h.address for h in hosts}, origin)
        for claim in plan.paced:
            waiting.pop(claim.source_id, None)
            self.report.outcomes.append(Outcome(claim.source_id, "paced", f"asked of {origin} in a later minute"))

        def in_order() -> list[str]:
            return [source_id for source_id in plan.asked if source_id in waiting]

        last_error = f"no origin host of {domain} answered"
        for host in hosts:
            if not waiting:
                break
            host_report = await self._pull_host(domain, host, in_order(), on_pulled, timeout)
            if host_report.rate_limited is not None and (rest := [i for i in in_order() if i != host_report.rate_limited]):
                # Spec §6: after a 421 the origin still serves the ids it knows on a new
                # connection: ask at once for those not yet asked, rather than at the next sweep.
                host_report = await self._pull_host(domain, host, rest, on_pulled, timeout)
            if host_report.error:
                last_error = host_report.error
                log.info("pull of %s from %s: %s", domain, host, host_report.error)
        # Spec §5.3, §5.6: what no host settled (no SOURCE anywhere, 4xx, no answer) is retried later.
        for source_id in list(waiting):
            await self._settle_retry(waiting.pop(source_id), last_error)

    async def _pull_host(self, domain: str, host: OriginHost, source_ids: list[str], on_pulled, timeout: float):
        async with self.slot(host):
            self.report.connections.append(f"{domain} -> {host}")
            return await pull_from_host(
                host,
                source_ids,
                on_pulled,
                port=settings.MAIL_REMOTE_SMTP_PORT,
                helo_name=settings.MAIL_HOSTNAME,
                timeout=timeout,
                max_size=settings.MAIL_MAX_MESSAGE_SIZE,
                spool_directory=self.spool_directory,
            )

    async def _settle(self, claim: Claim, pulled: Pulled) -> None:
        host = str(pulled.host)
        # Spec §5.4: a body is only this announcement's if the origin recorded this envelope for
        # the id; otherwise the id was replayed to us, and the announcement is a forgery.
        mismatch = envelope_mismatch(claim.mail_from, claim.rcpt_tos, pulled.envelope) if pulled.body is not None else None
        try:
            if mismatch is not None:
                reason = f"{mismatch}; id {claim.source_id} announced by [{claim.client_address}]"
                outcome = await self.services.record_failed(claim, reason, host)
            elif pulled.body is not None:
                outcome = await self.services.deliver_pulled(claim, pulled.body, pulled.host.name, pulled.host.address)
            else:
                outcome = await self.services.record_failed(claim, pulled.refusal or "refused", host)
        except Exception as exc:
            # Our own fault (database, disk): temporary, as for DATA; the body is pulled again later.
            log.exception("recording the pull of %s failed", claim.source_id)
            outcome = await self.services.record_retry(claim, f"local error while storing: {exc}", host)
        self.report.outcomes.append(outcome)

    async def _settle_retry(self, claims: list[Claim], reason: str) -> None:
        for claim in claims:
            self.report.outcomes.append(await self.services.record_retry(claim, reason))


def run_sweep(domains: list[str] | None = None) -> SweepReport:
    """One sweep, synchronously (from a django-q2 task or a command): expire, claim, pull, record.

    `domains` limits it to those sender domains (the pull kicked when SOURCE is accepted);
    None takes every domain with something due.
    """
    expired = pulls.expire_overdue()
    if domains is None:
        domains = pulls.due_domains()
    report = async_to_sync(Sweep().run)(domains) if domains else SweepReport()
    report.expired = expired
    if report.outcomes or report.expired:
        log.info("callback sweep: %s", report.summary())
    return report
