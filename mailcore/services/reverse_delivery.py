"""Reverse delivery as the SMTP listener needs it: recording SOURCE announcements, serving GET.

reverse-delivery.md §3 (we are R, the receiver of an announcement) and §4 (we are the origin MX
that a receiver pulls a body from).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import dns.nameserver
import dns.resolver
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from mailcore import jobs
from mailcore.addresses import domain_of
from mailcore.delivery import dsn
from mailcore.models import Announcement, AnnouncementState, Message, QueueItem, QueueState, SourcedMessage
from mailcore.reverse_delivery.envelope import envelope_lines
from mailcore.reverse_delivery.ids import new_source_id
from mailcore.services import accounts, outbound
from mailcore.services.maildrop import release_unreferenced_bodies
from mailcore.store import message_store

log = logging.getLogger("mailcore.reverse_delivery")

# --- receiving role: SOURCE ------------------------------------------------------------------


class AnnounceResult(enum.Enum):
    ACCEPTED = "accepted"
    ALREADY_ANNOUNCED = "this id was announced before"
    TOO_MANY_FROM_CLIENT = "too many pending from this client"
    TOO_MANY_FROM_DOMAIN = "too many pending from this sender domain"
    TOO_MANY_FROM_CLIENT_FOR_DOMAIN = "too many pending from this client for this sender domain"


def client_share_of_domain_cap() -> int:
    """Pending announcements one client may hold for one sender domain: a fifth of the domain's cap.

    Spec §6, Fair pulls: one client address cannot take every slot of a sender domain, so the
    domain's genuine mail, announced by its own MX, still finds room.
    """
    return max(1, settings.MAIL_SOURCE_MAX_PENDING_PER_DOMAIN // 5)


def announce(source_id: str, mail_from: str, rcpt_tos: list[str], client_address: str, helo_name: str) -> AnnounceResult:
    """Record a pending announcement (spec §5.1) and kick its first pull once it is committed.

    The caps of spec §6 (reflection) are checked in the same transaction. An id we already hold
    an announcement for is refused (spec §3): a sender never reuses one (rule 2), so a repeat is
    someone replaying an id it has seen, and nothing is recorded.
    """
    sender_domain = domain_of(mail_from)
    with transaction.atomic():
        if Announcement.objects.filter(source_id=source_id).exists():
            log.warning(
                "SOURCE %s refused: already announced (now from <%s> to %s by [%s] %s)",
                source_id, mail_from, ", ".join(f"<{r}>" for r in rcpt_tos), client_address, helo_name,
            )
            return AnnounceResult.ALREADY_ANNOUNCED
        pending = Announcement.objects.filter(state=AnnouncementState.PENDING)
        if pending.filter(client_address=client_address).count() >= settings.MAIL_SOURCE_MAX_PENDING_PER_CLIENT:
            return AnnounceResult.TOO_MANY_FROM_CLIENT
        if pending.filter(client_address=client_address, sender_domain=sender_domain).count() >= client_share_of_domain_cap():
            return AnnounceResult.TOO_MANY_FROM_CLIENT_FOR_DOMAIN
        if pending.filter(sender_domain=sender_domain).count() >= settings.MAIL_SOURCE_MAX_PENDING_PER_DOMAIN:
            return AnnounceResult.TOO_MANY_FROM_DOMAIN
        Announcement.objects.create(
            source_id=source_id,
            mail_from=mail_from,
            sender_domain=sender_domain,
            rcpt_tos=list(rcpt_tos),
            client_address=client_address,
            helo_name=helo_name,
        )
        transaction.on_commit(lambda: _kick_pull(sender_domain))
    return AnnounceResult.ACCEPTED


def _kick_pull(sender_domain: str) -> None:
    try:
        jobs.enqueue_pull(sender_domain)
    except Exception:  # the broker is down: the periodic sweep (spec §5.2) still picks it up
        log.exception("could not enqueue the pull for %s; the sweep will retry it", sender_domain)


# --- origin role: GET ------------------------------------------------------------------------


class FetchRefused(Exception):
    """Strict mode (spec §6): the client is no MX of any recipient domain of this id."""


@dataclass(frozen=True)
class SourcedBody:
    source_id: str
    body_ref: str
    size: int
    mail_from: str = ""
    rcpt_tos: tuple[str, ...] = ()

    def envelope_lines(self) -> list[str]:
        """The FROM and TO lines of the 250 to GET: the envelope this id names (spec §4)."""
        return envelope_lines(self.mail_from, list(self.rcpt_tos))


def fetch_sourced(source_id: str, client_address: str) -> SourcedBody | None:
    """The body to serve for `GET <id>`, or None when the id is unknown or expired (spec §4).

    Records the first and the latest fetch with the client's address. Raises FetchRefused in
    strict mode when the client is not a mail host of one of the recipients' domains.
    """
    now = timezone.now()
    sourced = (
        SourcedMessage.objects.select_related("message")
        .filter(source_id=source_id, expired=False, expires_at__gt=now)
        .first()
    )
    if sourced is None:
        return None
    if settings.MAIL_SOURCE_STRICT and not client_serves_domains(
        client_address, {domain_of(r) for r in sourced.rcpt_tos}
    ):
        raise FetchRefused(source_id)
    with transaction.atomic():
        SourcedMessage.objects.filter(pk=sourced.pk, first_fetch_at__isnull=True).update(
            first_fetch_at=now, first_fetch_address=client_address
        )
        SourcedMessage.objects.filter(pk=sourced.pk).update(
            last_fetch_at=now, last_fetch_address=client_address, fetch_count=F("fetch_count") + 1
        )
    return SourcedBody(
        source_id=source_id,
        body_ref=sourced.message.body_ref,
        size=sourced.message.size,
        mail_from=sourced.mail_from,
        rcpt_tos=tuple(sourced.rcpt_tos),
    )


def client_serves_domains(client_address: str, domains: set[str]) -> bool:
    """True when `client_address` is an MX host (or, with no MX, the address) of one of `domains`.

    DNS errors propagate: the listener answers them with a temporary failure.
    """
    try:
        client = ipaddress.ip_address(client_address)
    except ValueError:
        return False
    resolver = _resolver()
    for domain in domains:
        try:
            hosts = [str(r.exchange).rstrip(".") for r in resolver.resolve(domain, "MX")]
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            hosts = [domain]
        for host in hosts:
            if not host:
                continue
            for rdtype in ("A", "AAAA"):
                try:
                    answers = resolver.resolve(host, rdtype)
                except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                    continue
                if any(ipaddress.ip_address(a.address) == client for a in answers):
                    return True
    return False


def _resolver():
    if settings.MAIL_DNS_SERVERS:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in settings.MAIL_DNS_SERVERS]
    else:
        resolver = dns.resolver.Resolver()
    resolver.lifetime = getattr(settings, "MAIL_DNS_TIMEOUT", 10.0)
    return resolver



# --- sending role: the messages we announce with SOURCE (spec §3) ----------------------------


def record_sourced(message_id: int, mail_from: str, rcpt_tos: list[str], destination_host: str, size: int) -> str | None:
    """Record one SOURCE envelope under a fresh id and commit it; returns the id to send.

    Spec §3 rule 1: the body (the stored Message, already durable) and this row are committed
    before SOURCE leaves. Returns None when GET could not serve the exact octets that DATA would
    send: the stored body is gone or its size differs from the outbound copy's `size` (a stored
    copy with a Return-Path, which the queue strips at send time).
    """
    stored = Message.objects.filter(pk=message_id).values_list("size", "body_ref").first()
    if stored is None or stored[0] != size or not stored[1]:
        return None
    expires_at = timezone.now() + timedelta(seconds=settings.MAIL_SOURCE_RETENTION)
    # Rule 2: an id is never reused. The column is unique, so a collision of 128 random bits
    # (which will not happen) is an IntegrityError, and a new id is drawn.
    for _ in range(3):
        source_id = new_source_id()
        try:
            with transaction.atomic():
                SourcedMessage.objects.create(
                    source_id=source_id,
                    message_id=message_id,
                    mail_from=mail_from,
                    rcpt_tos=list(rcpt_tos),
                    destination_host=destination_host[:255],
                    expires_at=expires_at,
                )
        except IntegrityError:
            continue
        return source_id
    raise RuntimeError("could not draw an unused SOURCE id")


def withdraw_sourced(source_id: str) -> None:
    """The receiver did not take the id (any reply but 250, or no reply): GET answers 550 from now on.

    The queue retries those recipients with a new id or bounces them itself, so this id must
    neither be served to a late GET nor cause a retention-expiry notice.
    """
    SourcedMessage.objects.filter(source_id=source_id).update(expired=True)


@dataclass
class ExpiryCounts:
    notified: int = 0  # never fetched: the local sender was told
    quiet: int = 0  # fetched at least once: nothing to say
    released: int = 0  # bodies removed from the store
    ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.notified} expired unfetched (sender notified), {self.quiet} expired after a fetch, {self.released} bodies released"


def expire_sourced(now: datetime | None = None, limit: int = 500) -> ExpiryCounts:
    """Spec §3 rule 5: end the retention of what we sourced; tell the sender about what was never fetched.

    A sourced message past `expires_at` that no GET ever fetched gets a DSN (RFC 3464) to its
    original sender when that sender is one of our own addresses (never anyone else's: spec §6,
    "No backscatter"), naming the recipients whose queue item was handed over by SOURCE. Each
    row is settled in its own transaction, conditional on still being unexpired, so two workers
    never notify twice. Then bodies nothing else refers to are released.
    """
    now = now or timezone.now()
    counts = ExpiryCounts()
    due = SourcedMessage.objects.filter(expired=False, expires_at__lte=now).select_related("message").order_by("expires_at", "pk")
    message_ids: set[int] = set()
    for sourced in list(due[:limit]):
        with transaction.atomic():
            if not SourcedMessage.objects.filter(pk=sourced.pk, expired=False).update(expired=True):
                continue  # another worker settled it
            message_ids.add(sourced.message_id)
            counts.ids.append(sourced.source_id)
            if sourced.fetch_count:
                counts.quiet += 1
                continue
            counts.notified += 1
            handed_over = set(
                QueueItem.objects.filter(
                    message_id=sourced.message_id, recipient__in=sourced.rcpt_tos, state=QueueState.SOURCED
                ).values_list("recipient", flat=True)
            )
            recipients = [r for r in sourced.rcpt_tos if r in handed_over]
            log.warning(
                "SOURCE %s of %s to %s expired without a GET (recipients %s)",
                sourced.source_id, sourced.message.queue_id, sourced.destination_host, ", ".join(sourced.rcpt_tos),
            )
            if not recipients or not sourced.mail_from:
                continue
            if not accounts.is_local_domain(domain_of(sourced.mail_from)):
                log.info("SOURCE %s: no expiry notice to <%s>, not a local sender", sourced.source_id, sourced.mail_from)
                continue
            _notify_never_collected(sourced, recipients)
    if message_ids:
        counts.released = release_unreferenced_bodies(sorted(message_ids))
    if counts.ids:
        log.info("sourced messages: %s", counts.summary())
    return counts


def _notify_never_collected(sourced: SourcedMessage, recipients: list[str]) -> None:
    message = sourced.message
    try:
        original = message_store().read(message.body_ref)
    except (OSError, ValueError):
        original = f"Message-ID: <unavailable-{message.queue_id}@{settings.MAIL_HOSTNAME}>\r\n".encode()
    reason = (
        f"the receiving server {sourced.destination_host} accepted the message for retrieval"
        f" (SOURCE {sourced.created_at:%Y-%m-%d %H:%M:%S} UTC) but never collected it within"
        f" {settings.MAIL_SOURCE_RETENTION} s"
    )
    report = dsn.build_report(
        dsn.FAILED,
        sender=sourced.mail_from,
        queue_id=message.queue_id,
        arrival=message.received_at,
        # RFC 3463 X.4.7: delivery time expired; 4.x as the queue uses for its own give-up.
        recipients=[dsn.RecipientStatus(r, "4.4.7", reason, last_attempt=sourced.created_at) for r in recipients],
        original=original,
    )
    outbound.notify(sourced.mail_from, report, about=f"{message.queue_id} (SOURCE {sourced.source_id} never collected)")
