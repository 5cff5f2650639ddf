"""The receiving side's pull transactions (spec §5): claim due announcements, record what each pull gave."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from mailcore.envelope import Envelope
from mailcore.headers import first_part, trace_headers
from mailcore.models import Announcement, AnnouncementState, Transport, Verification
from mailcore.rejections import PolicyRejection
from mailcore.reverse_delivery.alignment import from_aligned
from mailcore.services import inbound, pins
from mailcore.services.login_failures import AddressCounter

log = logging.getLogger("mailcore.reverse_delivery")

# The longest pause between two attempts, however many failed before (growing delays, spec §5.6).
MAX_RETRY_DELAY = 3600
# Announcements one worker takes for one domain at once; more wait for the next round.
CLAIM_LIMIT = 500


@dataclass(frozen=True)
class Claim:
    """An announcement a worker holds for one attempt; `attempt` is the token that proves it still does."""

    pk: int
    source_id: str
    mail_from: str
    sender_domain: str
    rcpt_tos: list[str]
    client_address: str
    helo_name: str
    attempt: int
    received_at: datetime


@dataclass(frozen=True)
class Outcome:
    source_id: str
    state: str
    detail: str = ""
    queue_id: str = ""


def lease_seconds() -> float:
    """How long a claim keeps other workers away: longer than any pull can take (the sweep's deadline)."""
    return 10 * settings.MAIL_CALLBACK_TIMEOUT


def retry_delay(attempts: int) -> float:
    """MAIL_CALLBACK_INTERVAL after the first attempt, doubling after each further one, capped."""
    return min(settings.MAIL_CALLBACK_INTERVAL * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY)


def due_domains(now: datetime | None = None) -> list[str]:
    """Sender domains with a pending announcement due now (one pull each)."""
    now = now or timezone.now()
    return list(
        Announcement.objects.filter(state=AnnouncementState.PENDING, next_attempt_at__lte=now)
        .order_by()
        .values_list("sender_domain", flat=True)
        .distinct()
    )


def expire_overdue(now: datetime | None = None) -> int:
    """Spec §5.6: pending past MAIL_CALLBACK_MAX_AGE becomes failed (those not held by a worker now)."""
    now = now or timezone.now()
    deadline = now - timedelta(seconds=settings.MAIL_CALLBACK_MAX_AGE)
    expired = 0
    overdue = Announcement.objects.filter(state=AnnouncementState.PENDING, received_at__lt=deadline, next_attempt_at__lte=now)
    for a in overdue.only("pk", "last_error", "attempts"):
        reason = f"still pending after {settings.MAIL_CALLBACK_MAX_AGE} s; last error: {a.last_error or 'none'}"
        expired += Announcement.objects.filter(pk=a.pk, state=AnnouncementState.PENDING, attempts=a.attempts).update(
            state=AnnouncementState.FAILED, last_error=reason, completed_at=now
        )
    if expired:
        log.info("%d announcement(s) failed: pending longer than %d s", expired, settings.MAIL_CALLBACK_MAX_AGE)
    return expired


def claim_due(domain: str, now: datetime | None = None, limit: int = CLAIM_LIMIT) -> list[Claim]:
    """Take the due pending announcements of one sender domain for one attempt.

    Two workers never hold the same announcement: each claimed row gets a lease (its
    `next_attempt_at` moves past the pull's deadline) and its attempt count goes up by one, in
    one transaction. On PostgreSQL, `SELECT ... FOR UPDATE SKIP LOCKED` lets concurrent workers
    take disjoint rows without waiting; on SQLite, which has no row locks, each row is taken by
    an UPDATE conditional on the values just read, which only one worker can win.
    """
    now = now or timezone.now()
    lease_until = now + timedelta(seconds=lease_seconds())
    due = Announcement.objects.filter(
        state=AnnouncementState.PENDING, sender_domain=domain, next_attempt_at__lte=now
    ).order_by("next_attempt_at", "pk")
    claimed: list[Claim] = []
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            rows = list(due.select_for_update(skip_locked=True)[:limit])
            Announcement.objects.filter(pk__in=[r.pk for r in rows]).update(
                next_attempt_at=lease_until, attempts=F("attempts") + 1
            )
        else:
            rows = []
            for row in due[:limit]:
                won = Announcement.objects.filter(
                    pk=row.pk, state=AnnouncementState.PENDING, attempts=row.attempts, next_attempt_at__lte=now
                ).update(next_attempt_at=lease_until, attempts=row.attempts + 1)
                if won:
                    rows.append(row)
        for r in rows:
            claimed.append(
                Claim(
                    pk=r.pk,
                    source_id=r.source_id,
                    mail_from=r.mail_from,
                    sender_domain=r.sender_domain,
                    rcpt_tos=list(r.rcpt_tos),
                    client_address=r.client_address,
                    helo_name=r.helo_name,
                    attempt=r.attempts + 1,
                    received_at=r.received_at,
                )
            )
    return claimed


# Ids from clients without a good record, asked of one origin per minute (spec §6, Fair pulls):
# under its unknown-id limit (10 a minute by default), so that bogus ids never make it refuse us.
def _paced_gets() -> AddressCounter:
    return AddressCounter("paced-gets", settings.MAIL_CALLBACK_UNKNOWN_PACE, 60.0)


@dataclass
class PullPlan:
    """Which claimed ids a pull asks for now, in order, and which wait for their turn (spec §6, Fair pulls)."""

    asked: list[str]
    paced: list[Claim]


def plan_pull(domain: str, claims: list[Claim], origin_addresses: set[str], origin: str, now: datetime | None = None) -> PullPlan:
    """Order a domain's claimed ids: first those of clients with a good record, then a paced few.

    A client has a good record for `domain` when an earlier announcement of it from that domain
    was pulled back (verified or not aligned), or when it is one of the origin's own MX
    addresses. The others' ids are asked at most MAIL_CALLBACK_UNKNOWN_PACE a minute per
    origin (`origin`, counted across workers in the shared cache), taken in turn from each
    client so that one client's flood does not delay another's; the rest are put back, their
    attempt not counted, for the next minute.
    """
    now = now or timezone.now()
    clients = {c.client_address for c in claims}
    good = set(
        Announcement.objects.filter(
            sender_domain=domain,
            client_address__in=clients,
            state__in=[AnnouncementState.VERIFIED, AnnouncementState.UNVERIFIED],
        ).values_list("client_address", flat=True)
    ) | (clients & origin_addresses)
    asked = list(dict.fromkeys(c.source_id for c in claims if c.client_address in good))
    by_client: dict[str, list[Claim]] = {}
    for c in claims:
        if c.client_address not in good and c.source_id not in asked:
            by_client.setdefault(c.client_address, []).append(c)
    turns = [c for batch in _in_turn(list(by_client.values())) for c in batch]
    counter = _paced_gets()
    paced: list[Claim] = []
    here = 0  # this pull's own count, the limit when the shared cache cannot be reached
    for claim in turns:
        if claim.source_id in asked:
            continue
        try:
            # One atomic step (count, then check): two pulls at once never both take the last turn.
            blocked = counter.reserve(origin) is None
        except OSError as exc:  # CounterUnavailable: the pace is kept within this pull alone
            log.warning("pacing pulls from %s without the shared cache: %s", origin, exc)
            blocked = here >= counter.limit
        if blocked:
            paced.append(claim)
            continue
        here += 1
        asked.append(claim.source_id)
    paced = [c for c in paced if c.source_id not in asked]
    until = now + timedelta(seconds=60)
    for claim in paced:
        Announcement.objects.filter(pk=claim.pk, state=AnnouncementState.PENDING, attempts=claim.attempt).update(
            attempts=claim.attempt - 1,
            next_attempt_at=until,
            last_error=f"waiting its turn: ids of clients without a good record are asked of {origin}"
            f" at most {settings.MAIL_CALLBACK_UNKNOWN_PACE} a minute",
        )
    return PullPlan(asked, paced)


def _in_turn(queues: list[list[Claim]]):
    """One claim from each client in turn (round robin), each client's in the order received."""
    index = 0
    while any(index < len(q) for q in queues):
        yield [q[index] for q in queues if index < len(q)]
        index += 1


def _held(claim: Claim):
    """The announcement row, locked, if this claim still holds it; None if another worker took over."""
    return (
        Announcement.objects.select_for_update()
        .filter(pk=claim.pk, state=AnnouncementState.PENDING, attempts=claim.attempt)
        .first()
    )


def deliver_pulled(claim: Claim, content: bytes | list, origin_host: str, origin_address: str) -> Outcome:
    """A body came back from the origin: deliver it to the recipients recorded at SOURCE time.

    The deliveries and the announcement's new state commit together, so a crash leaves either
    both or neither (and then the lease lapses and the pull is made again): nothing is lost and
    nothing is delivered twice.
    """
    aligned, why_not = from_aligned(claim.mail_from, first_part(content))
    if aligned:
        envelope_extra = dict(
            verification=Verification.VERIFIED,
            auth_result="pass",
            auth_comment=f"retrieved from {origin_host} [{origin_address}]",
        )
    else:
        # Spec §5.4: verified envelope, but the visible author is another domain's.
        envelope_extra = dict(
            verification=Verification.UNVERIFIED, auth_result="neutral", auth_comment="header.from not aligned"
        )
    envelope = Envelope(
        mail_from=claim.mail_from,
        rcpt_tos=list(claim.rcpt_tos),
        client_address=claim.client_address,
        helo_name=claim.helo_name,
        transport=Transport.SOURCE,
        **envelope_extra,
    )
    envelope = inbound.authenticate(envelope, content)  # SPF, DKIM, DMARC, ARC: before any transaction
    origin = f"{origin_host} [{origin_address}]"
    # The spam check waits for spamd (up to MAIL_SPAMD_TIMEOUT): done before the transaction, so
    # the announcement's row lock (on SQLite, the database's one write lock) is not held meanwhile.
    # Scored as `receive` would score it: with our trace headers, for the recipients it would take.
    verdict, refused = None, None
    try:
        recipients = inbound.spam_recipients(envelope, content)
        verdict = inbound.spam_scored(
            envelope, trace_headers(envelope, claim.source_id), content, recipients, f"SOURCE {claim.source_id}"
        )
    except PolicyRejection as exc:  # SpamRejection or SenderBlocked: every recipient refuses it
        refused = exc
    now = timezone.now()
    with transaction.atomic():
        announcement = _held(claim)
        if announcement is None:
            return Outcome(claim.source_id, "lost", "another worker settled it first")
        announcement.origin_host = origin
        announcement.completed_at = now
        # Spec §5.8: the origin MX of this domain handed back the body of this very envelope,
        # so the domain delivers by SOURCE; its DATA mail is a downgrade from now on.
        pins.remember(claim.sender_domain, now)
        try:
            if refused is not None:
                raise refused
            receipt = inbound.receive(envelope, content, spam=verdict)
        except PolicyRejection as exc:
            # No recipient takes it any more (unverified-mail policy `reject`, or gone). Never a
            # bounce: the sender may be forged (spec §6, "No backscatter").
            announcement.state = AnnouncementState.UNVERIFIED if not aligned else AnnouncementState.FAILED
            announcement.last_error = f"pulled, but no recipient accepts it: {exc}" + (f"; {why_not}" if why_not else "")
            announcement.save()
            return Outcome(claim.source_id, announcement.state, announcement.last_error)
        announcement.state = AnnouncementState.VERIFIED if aligned else AnnouncementState.UNVERIFIED
        announcement.last_error = "" if aligned else f"header.from not aligned: {why_not}"
        announcement.message = receipt.message
        announcement.save()
    log.info(
        "announcement %s from <%s> %s: pulled from %s, queue id %s",
        claim.source_id, claim.mail_from, announcement.state, origin, receipt.queue_id,
    )
    return Outcome(claim.source_id, announcement.state, announcement.last_error, receipt.queue_id)


def record_failed(claim: Claim, reason: str, origin_host: str = "") -> Outcome:
    """Permanent: 550/554, a body over the limit, a sender domain that cannot have an origin.

    The envelope stays on record as a forgery attempt; nothing is delivered and no bounce is sent.
    """
    with transaction.atomic():
        announcement = _held(claim)
        if announcement is None:
            return Outcome(claim.source_id, "lost", "another worker settled it first")
        announcement.state = AnnouncementState.FAILED
        announcement.last_error = reason
        announcement.origin_host = origin_host or announcement.origin_host
        announcement.completed_at = timezone.now()
        announcement.save()
    log.warning(
        "announcement %s failed: <%s> from %s (EHLO %s): %s",
        claim.source_id, claim.mail_from, claim.client_address, claim.helo_name, reason,
    )
    return Outcome(claim.source_id, AnnouncementState.FAILED, reason)


def record_retry(claim: Claim, reason: str, origin_host: str = "") -> Outcome:
    """Temporary: try again after a growing delay, but never past MAIL_CALLBACK_MAX_AGE (then failed)."""
    now = timezone.now()
    give_up_at = claim.received_at + timedelta(seconds=settings.MAIL_CALLBACK_MAX_AGE)
    if now >= give_up_at:
        return record_failed(claim, f"still pending after {settings.MAIL_CALLBACK_MAX_AGE} s; last error: {reason}", origin_host)
    with transaction.atomic():
        announcement = _held(claim)
        if announcement is None:
            return Outcome(claim.source_id, "lost", "another worker settled it first")
        announcement.next_attempt_at = min(now + timedelta(seconds=retry_delay(claim.attempt)), give_up_at)
        announcement.last_error = reason
        announcement.origin_host = origin_host or announcement.origin_host
        announcement.save()
    log.info("announcement %s from <%s>: attempt %d failed, retry at %s: %s",
             claim.source_id, claim.mail_from, claim.attempt, announcement.next_attempt_at.isoformat(), reason)
    return Outcome(claim.source_id, "retry", reason)


def counts() -> dict[str, int]:
    """Announcements by state, every state present (for `manage.py callbacks`)."""
    result = {state: 0 for state in AnnouncementState.values}
    for row in Announcement.objects.order_by().values("state").annotate(n=Count("pk")):
        result[row["state"]] = row["n"]
    return result


def listing(state: str | None = None, limit: int | None = None):
    """The announcements, newest first, optionally of one state."""
    rows = Announcement.objects.order_by("-received_at", "-pk")
    if state:
        rows = rows.filter(state=state)
    return list(rows[:limit] if limit else rows)
