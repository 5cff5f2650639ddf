"""Reverse delivery as the SMTP listener needs it: recording SOURCE announcements, serving GET.

reverse-delivery.md §3 (we are R, the receiver of an announcement) and §4 (we are the origin MX
that a receiver pulls a body from).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from mailcore.addresses import domain_of
from mailcore.models import Announcement, AnnouncementState, SourcedMessage

log = logging.getLogger("mailcore.verification")

# spec §3: id = 32( ALPHA / DIGIT ), case-sensitive.
SOURCE_ID = re.compile(r"[A-Za-z0-9]{32}\Z")


def is_source_id(text: str) -> bool:
    return bool(SOURCE_ID.match(text))


# --- receiving role: SOURCE ------------------------------------------------------------------


class AnnounceResult(enum.Enum):
    ACCEPTED = "accepted"
    TOO_MANY_FROM_CLIENT = "too many pending from this client"
    TOO_MANY_FROM_DOMAIN = "too many pending from this sender domain"


def announce(source_id: str, mail_from: str, rcpt_tos: list[str], client_address: str, helo_name: str) -> AnnounceResult:
    """Record a pending announcement (spec §5.1) and kick its first pull once it is committed.

    The caps of spec §6 (reflection) are checked in the same transaction. A repeated SOURCE of
    the same id for the same envelope from the same client is the same announcement: it is
    acknowledged again without a second row, so the body is never delivered twice.
    """
    sender_domain = domain_of(mail_from)
    with transaction.atomic():
        pending = Announcement.objects.filter(state=AnnouncementState.PENDING)
        duplicate = pending.filter(
            source_id=source_id, mail_from=mail_from, client_address=client_address
        ).values_list("rcpt_tos", flat=True)
        if any(list(r) == list(rcpt_tos) for r in duplicate):
            return AnnounceResult.ACCEPTED
        if pending.filter(client_address=client_address).count() >= settings.MAIL_SOURCE_MAX_PENDING_PER_CLIENT:
            return AnnounceResult.TOO_MANY_FROM_CLIENT
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
    from mailcore import tasks

    try:
        tasks.enqueue_pull(sender_domain)
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
    return SourcedBody(source_id=source_id, body_ref=sourced.message.body_ref, size=sourced.message.size)


def client_serves_domains(client_address: str, domains: set[str]) -> bool:
    """True when `client_address` is an MX host (or, with no MX, the address) of one of `domains`.

    DNS errors propagate: the listener answers them with a temporary failure.
    """
    import dns.exception
    import dns.resolver

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
    import dns.nameserver
    import dns.resolver

    if settings.MAIL_DNS_SERVERS:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in settings.MAIL_DNS_SERVERS]
    else:
        resolver = dns.resolver.Resolver()
    resolver.lifetime = getattr(settings, "MAIL_DNS_TIMEOUT", 10.0)
    return resolver

