"""Sender allow and block lists (operations.md, `manage.py sender`): patterns, scopes, precedence.

A pattern is an address (`user@example.org`), a domain (`@example.org`, its subdomains too) or
a client address or network (`192.0.2.7`, `192.0.2.0/24`, `2001:db8::/32`). An entry applies to
every local domain (global), to one domain, or to one mailbox. For one recipient, the narrowest
scope with a matching entry decides, and at one scope `block` beats `allow`.

Address and domain patterns match the envelope sender and the From header's address; network
patterns match the SMTP client. At RCPT only the envelope is known, so a block there concerns the
envelope sender or the client (550 5.7.1 to RCPT); once the header is read, the whole decision
is made again (550 5.7.1 to DATA when the From header is what is blocked).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q

from mailcore.addresses import AddressError, domain_of, normalize_address, normalize_domain
from mailcore.models import AuditAction, DeliveryState, Domain, Mailbox, SenderAction, SenderRule, SenderScope, Transport
from mailcore.services import audit, quarantine

ALLOW, BLOCK = SenderAction.ALLOW, SenderAction.BLOCK
# Narrowest first: the first scope with a matching entry decides.
_NARROWEST_FIRST = (SenderScope.MAILBOX, SenderScope.DOMAIN, SenderScope.GLOBAL)
# The most entries one mailbox's owner may keep.
MAX_MAILBOX_ENTRIES = 1000
# Our own users' mail and the notices we generate are never held to a sender list.
UNLISTED_TRANSPORTS = (Transport.SUBMISSION, Transport.LOCAL)


class SenderListError(Exception):
    """A sender-list request that cannot be carried out; one line for the operator or a form."""


# --- patterns ----------------------------------------------------------------------------------


def normalize_pattern(pattern: str) -> str:
    """The canonical form of a pattern, or SenderListError saying what is wrong with it."""
    pattern = pattern.strip()
    if not pattern:
        raise SenderListError("empty pattern")
    if pattern.startswith("@"):
        try:
            return "@" + normalize_domain(pattern[1:])
        except AddressError as exc:
            raise SenderListError(f"bad domain pattern {pattern!r}: {exc}") from None
    if "@" in pattern:
        try:
            return normalize_address(pattern)
        except AddressError as exc:
            raise SenderListError(f"bad address pattern {pattern!r}: {exc}") from None
    try:
        network = ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        raise SenderListError(
            f"bad pattern {pattern!r}: give an address, @domain, or an IP address or network"
        ) from None
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


@dataclass(frozen=True)
class Entry:
    """One rule, ready to match without the database."""

    action: str
    pattern: str
    scope: str

    @property
    def concerns_client(self) -> bool:
        return "@" not in self.pattern

    @functools.cached_property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The pattern's network, parsed once (a listener keeps its entries for a while)."""
        try:
            return ipaddress.ip_network(self.pattern, strict=False)
        except ValueError:
            return None

    def matches(self, sender: str, client: str | None, header_from: str | None) -> bool:
        if self.concerns_client:
            return _in_network(client, self.network)
        return _matches_address(self.pattern, sender) or (header_from is not None and _matches_address(self.pattern, header_from))


def _matches_address(pattern: str, address: str) -> bool:
    if not address or "@" not in address:
        return False
    address = address.lower()
    if pattern.startswith("@"):
        domain = domain_of(address)
        return domain == pattern[1:] or domain.endswith("." + pattern[1:])
    return address == pattern


@functools.lru_cache(maxsize=4096)
def _client_ip(client: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket (::ffff:192.0.2.7) is the IPv4 address.
    return getattr(address, "ipv4_mapped", None) or address


def _in_network(client: str | None, network) -> bool:
    if not client or network is None:
        return False
    address = _client_ip(client)
    return address is not None and address.version == network.version and address in network


@dataclass(frozen=True)
class Rules:
    """The entries that concern one recipient: the global ones, its domain's and its mailbox's."""

    entries: tuple[Entry, ...] = ()

    def decide(self, sender: str, client: str, header_from: str | None = None) -> str | None:
        """ALLOW, BLOCK or None (no entry matches). `header_from` None: at RCPT, not yet known."""
        if not self.entries:
            return None
        for scope in _NARROWEST_FIRST:
            matched = {e.action for e in self.entries if e.scope == scope and e.matches(sender, client, header_from)}
            if BLOCK in matched:
                return BLOCK
            if ALLOW in matched:
                return ALLOW
        return None


NO_RULES = Rules()


def rules_for(address: str) -> Rules:
    """The entries that apply to mail for the local recipient `address` (one query)."""
    try:
        address = normalize_address(address)
    except AddressError:
        return NO_RULES
    rows = SenderRule.objects.filter(
        Q(scope=SenderScope.GLOBAL)
        | Q(scope=SenderScope.DOMAIN, domain__name=domain_of(address))
        | Q(scope=SenderScope.MAILBOX, mailbox__address=address)
    ).values_list("action", "pattern", "scope")
    return Rules(tuple(Entry(*row) for row in rows)) if rows else NO_RULES


def applies_to(envelope) -> bool:
    """Whether sender lists apply to this message at all (not to our own users' mail)."""
    return envelope.transport not in UNLISTED_TRANSPORTS


# --- the lists: add, remove, list ----------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Where an entry goes: everywhere, a domain, or a mailbox (`--for`)."""

    kind: str
    domain: Domain | None = None
    mailbox: Mailbox | None = None

    @property
    def name(self) -> str:
        if self.mailbox is not None:
            return self.mailbox.address
        if self.domain is not None:
            return self.domain.name
        return "all domains"

    def filter(self) -> dict:
        return {"scope": self.kind, "domain": self.domain, "mailbox": self.mailbox}


GLOBAL = Scope(SenderScope.GLOBAL)


def scope_for(target: str | None) -> Scope:
    """`--for` as given: None for every domain, `a.test` for a domain, `alice@a.test` for a mailbox."""
    if not target:
        return GLOBAL
    target = target.strip()
    if "@" in target:
        try:
            address = normalize_address(target)
        except AddressError as exc:
            raise SenderListError(f"bad mailbox {target!r}: {exc}") from None
        mailbox = Mailbox.objects.select_related("domain").filter(address=address).first()
        if mailbox is None:
            raise SenderListError(f"no mailbox {address}")
        return Scope(SenderScope.MAILBOX, mailbox.domain, mailbox)
    try:
        name = normalize_domain(target)
    except AddressError as exc:
        raise SenderListError(f"bad domain {target!r}: {exc}") from None
    domain = Domain.objects.filter(name=name).first()
    if domain is None:
        raise SenderListError(f"no local domain {name}")
    return Scope(SenderScope.DOMAIN, domain)


def mailbox_scope(mailbox: Mailbox) -> Scope:
    return Scope(SenderScope.MAILBOX, mailbox.domain, mailbox)


def domain_scope(domain: Domain) -> Scope:
    return Scope(SenderScope.DOMAIN, domain)


def set_entry(action: str, pattern: str, scope: Scope = GLOBAL) -> SenderRule:
    """Allow or block `pattern` at `scope`; replaces the other action there for the same pattern."""
    if action not in (ALLOW, BLOCK):
        raise SenderListError(f"unknown action {action!r}")
    pattern = normalize_pattern(pattern)
    actor = audit.current()
    if scope.mailbox is not None and SenderRule.objects.filter(mailbox=scope.mailbox).count() >= MAX_MAILBOX_ENTRIES:
        # Every entry is read for each message to the mailbox: an owner's list stays short.
        raise SenderListError(f"{scope.name} has {MAX_MAILBOX_ENTRIES} entries already: remove some first")
    with transaction.atomic():
        rule, created = SenderRule.objects.select_for_update().get_or_create(
            pattern=pattern, **scope.filter(), defaults={"action": action, "created_by": actor.name[:200]}
        )
        if created or rule.action != action:
            if not created:
                rule.action = action
                rule.created_by = actor.name[:200]
                rule.save(update_fields=["action", "created_by"])
            audit.record(
                AuditAction.SENDER_ALLOW if action == ALLOW else AuditAction.SENDER_BLOCK,
                f"{pattern} for {scope.name}",
                mailbox=scope.mailbox.address if scope.mailbox else "",
                detail="" if created else f"was {'block' if action == ALLOW else 'allow'}",
            )
    return rule


def remove_entry(pattern: str, scope: Scope = GLOBAL) -> None:
    pattern = normalize_pattern(pattern)
    with transaction.atomic():
        rule = SenderRule.objects.filter(pattern=pattern, **scope.filter()).first()
        if rule is None:
            raise SenderListError(f"no entry {pattern} for {scope.name}")
        rule.delete()
        audit.record(
            AuditAction.SENDER_REMOVE,
            f"{pattern} for {scope.name}",
            mailbox=scope.mailbox.address if scope.mailbox else "",
            detail=f"was {rule.action}",
        )


def remove_by_id(rule_id: int, mailbox: Mailbox) -> None:
    """A mailbox owner removes one of their own entries; another mailbox's ids are not found."""
    rule = SenderRule.objects.filter(pk=rule_id, scope=SenderScope.MAILBOX, mailbox=mailbox).first()
    if rule is None:
        raise SenderListError("no such entry")
    remove_entry(rule.pattern, mailbox_scope(mailbox))


def entries(scope: Scope | None = None):
    """Every entry, or those of one scope, with their domain and mailbox."""
    rows = SenderRule.objects.select_related("domain", "mailbox").order_by("scope", "pattern")
    if scope is not None:
        rows = rows.filter(**scope.filter())
    return rows


def set_from_message(action: str, delivery, scope: Scope, kind: str = "address") -> tuple[str, str | None]:
    """"Always allow" / "block" the sender of a delivery's message at `scope`, and then release /
    delete the delivery if it is still held: (the pattern, "released" / "deleted" or None)."""
    pattern = sender_pattern(delivery.message, kind)
    set_entry(action, pattern, scope)
    if delivery.state != DeliveryState.QUARANTINED:
        return pattern, None
    try:
        if action == ALLOW:
            quarantine.release(delivery.pk, mailbox=delivery.mailbox)
            return pattern, "released"
        quarantine.delete(delivery.pk, mailbox=delivery.mailbox)
        return pattern, "deleted"
    except quarantine.QuarantineError:  # released or deleted meanwhile
        return pattern, None


def sender_pattern(message, kind: str = "address") -> str:
    """The pattern that "always allow / block this sender" offers for a held message."""
    # The envelope sender first: it is known at RCPT already, so an allow entry for it also lifts
    # a domain's "reject" policy; the From header's address when the reverse-path is empty.
    address = message.mail_from or message.header_from
    if not address:
        raise SenderListError("this message has no sender address")
    return normalize_pattern("@" + domain_of(address) if kind == "domain" else address)
