"""Domains, mailboxes and aliases: provisioning, authentication and recipient routing."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from mailcore.addresses import AddressError, domain_of, normalize_address
from mailcore.models import Alias, AuditAction, AuthenticatedPolicy, Domain, Mailbox, UnverifiedPolicy
from mailcore.services import audit, credentials, dkim_keys
from mailcore.services.domains import AccountError, domain_name, get_domain
from mailcore.services.login_failures import LoginFailures

MAX_ALIAS_DEPTH = 10


# --- domains ---------------------------------------------------------------------------------


def add_domain(name: str, unverified_policy: str = UnverifiedPolicy.ACCEPT) -> Domain:
    name = domain_name(name)
    _check_policy(unverified_policy)
    try:
        with transaction.atomic():
            domain = Domain.objects.create(name=name, unverified_policy=unverified_policy)
            dkim_keys.ensure_keys(domain)  # its DKIM keys, to publish before its mail is signed
            return domain
    except IntegrityError:
        raise AccountError(f"domain {name} already exists") from None


def set_domain(
    name: str, *, unverified_policy: str | None = None, active: bool | None = None, authenticated_policy: str | None = None
) -> Domain:
    domain = get_domain(name)
    changes = []
    if unverified_policy is not None:
        _check_policy(unverified_policy)
        if unverified_policy != domain.unverified_policy:
            changes.append(f"unverified mail: {domain.unverified_policy} -> {unverified_policy}")
        domain.unverified_policy = unverified_policy
    if authenticated_policy is not None:
        if authenticated_policy not in AuthenticatedPolicy.values:
            raise AccountError(f"unknown policy {authenticated_policy!r}: use one of {', '.join(AuthenticatedPolicy.values)}")
        if authenticated_policy != domain.authenticated_policy:
            changes.append(f"authenticated mail: {domain.authenticated_policy} -> {authenticated_policy}")
        domain.authenticated_policy = authenticated_policy
    if active is not None:
        if active != domain.active:
            changes.append(f"active: {domain.active} -> {active}")
        domain.active = active
    with transaction.atomic():
        domain.save()
        if changes:
            audit.record(AuditAction.POLICY, f"domain {domain.name}", detail="; ".join(changes))
    return domain


def remove_domain(name: str) -> None:
    domain = get_domain(name)
    with transaction.atomic():
        if domain.mailboxes.filter(deliveries__isnull=False).exists():
            raise AccountError(f"domain {domain.name} has mailboxes holding mail; remove them first")
        domain.delete()


def list_domains():
    return Domain.objects.all()


def _check_policy(policy: str) -> None:
    if policy not in UnverifiedPolicy.values:
        raise AccountError(f"unknown policy {policy!r}: use one of {', '.join(UnverifiedPolicy.values)}")


# --- mailboxes -------------------------------------------------------------------------------


def add_mailbox(address: str, password: str, quota_bytes: int | None = None, active: bool = True) -> Mailbox:
    address = _address(address)
    _check_password(password)
    domain = get_domain(domain_of(address))
    mailbox = Mailbox(domain=domain, address=address, quota_bytes=quota_bytes, active=active)
    mailbox.set_password(password)
    try:
        with transaction.atomic():
            mailbox.save()
    except IntegrityError:
        raise AccountError(f"mailbox {address} already exists") from None
    return mailbox


def get_mailbox(address: str) -> Mailbox:
    address = _address(address)
    try:
        return Mailbox.objects.select_related("domain").get(address=address)
    except Mailbox.DoesNotExist:
        raise AccountError(f"unknown mailbox {address}") from None


def set_password(address: str, password: str) -> Mailbox:
    _check_password(password)
    mailbox = get_mailbox(address)
    mailbox.set_password(password)
    with transaction.atomic():
        mailbox.save(update_fields=["password"])
        audit.record(AuditAction.PASSWORD, f"mailbox {mailbox.address}", mailbox=mailbox.address)
    return mailbox


def set_mailbox(address: str, *, active: bool, quota_bytes: int | None) -> Mailbox:
    """Turn a mailbox on or off and set its quota (None or 0: none)."""
    mailbox = get_mailbox(address)
    mailbox.active, mailbox.quota_bytes = active, quota_bytes
    with transaction.atomic():
        mailbox.save(update_fields=["active", "quota_bytes"])
    return mailbox


def remove_mailbox(address: str) -> None:
    mailbox = get_mailbox(address)
    with transaction.atomic():
        # Deliveries go with the mailbox; bodies that nobody refers to any more are released by
        # the store's garbage collection, not here, so that no file is removed before the commit.
        mailbox.delete()


def list_mailboxes(domain: str | None = None):
    mailboxes = Mailbox.objects.select_related("domain")
    if domain:
        mailboxes = mailboxes.filter(domain=get_domain(domain))
    return mailboxes


def authenticate(address: str, password: str, before_hashing: Callable[[], None] | None = None) -> Mailbox | None:
    """The active mailbox for these credentials, or None.

    Runs the password hasher (slow by design) unless the same credentials were verified against
    the mailbox's current password hash within MAIL_AUTH_CACHE_TTL seconds, in this process: a
    client that logs in again and again then pays the hasher once per lifetime of its entry and
    otherwise one indexed query, as with Dovecot's auth cache. `before_hashing` is called right
    before the hasher runs, if it runs (`login` reserves a failure there).
    """
    try:
        address = normalize_address(address)
        mailbox = Mailbox.objects.select_related("domain").get(address=address)
    except (AddressError, Mailbox.DoesNotExist):
        if before_hashing is not None:
            before_hashing()
        # Spend the same time as a real check, so timing does not reveal which addresses exist.
        Mailbox().set_password(password)
        return None
    # Checked on every login, hit or not: disabling a mailbox or its domain takes effect at once.
    if not (mailbox.active and mailbox.domain.active):
        return None
    if credentials.recall(address, password, mailbox.pk, mailbox.password):
        return mailbox
    if before_hashing is not None:
        before_hashing()
    if not mailbox.check_password(password):
        return None
    # After the check: a hasher upgrade has just stored the new hash, which the entry then names.
    credentials.remember(address, password, mailbox.pk, mailbox.password)
    return mailbox


class LoginBlocked(Exception):
    """Too many failed logins from this client address: no password is checked."""


def login(client_address: str, address: str, password: str, failures: LoginFailures | None = None) -> Mailbox | None:
    """`authenticate` under the failed-login limit of `client_address` (LoginBlocked when reached).

    The one entrance of submission, POP3 and the web sign-in. A failure is reserved (counted
    atomically) before the hasher runs and given back when the password was right: a check
    of the count followed by a check of the password would let N parallel attempts all pass
    the first before any of them is counted, and check N passwords instead of the limit's worth.
    """
    failures = failures or LoginFailures()
    if failures.blocked(client_address):
        raise LoginBlocked(client_address)
    reserved: list[str] = []

    def reserve() -> None:
        key = failures.reserve(client_address)
        if key is None:
            raise LoginBlocked(client_address)
        reserved.append(key)

    mailbox = authenticate(address, password, before_hashing=reserve)
    if mailbox is not None:
        for key in reserved:
            failures.release(key)
    elif not reserved:  # refused without a hash (a disabled mailbox): a failure all the same
        failures.record(client_address)
    return mailbox


def _address(address: str) -> str:
    try:
        return normalize_address(address)
    except AddressError as exc:
        raise AccountError(str(exc)) from None


def _check_password(password: str) -> None:
    if not password:
        raise AccountError("empty password")


# --- aliases ---------------------------------------------------------------------------------


def add_alias(source: str, target: str) -> Alias:
    if source.strip().startswith("@"):
        domain = get_domain(source.strip()[1:])
        source = f"@{domain.name}"
    else:
        source = _address(source)
        domain = get_domain(domain_of(source))
    target = _address(target)
    if source == target:
        raise AccountError(f"alias {source} would point at itself")
    try:
        with transaction.atomic():
            return Alias.objects.create(domain=domain, source=source, target=target)
    except IntegrityError:
        raise AccountError(f"alias {source} -> {target} already exists") from None


def add_aliases(source: str, targets: list[str]) -> list[Alias]:
    """`source` to each of `targets`, all or none."""
    with transaction.atomic():
        return [add_alias(source, target) for target in targets]


def remove_alias(source: str, target: str | None = None) -> int:
    source = source.strip().lower()
    aliases = Alias.objects.filter(source=source)
    if target:
        aliases = aliases.filter(target=_address(target))
    removed, _ = aliases.delete()
    if not removed:
        raise AccountError(f"unknown alias {source}")
    return removed


def list_aliases():
    return Alias.objects.select_related("domain")


# --- routing ---------------------------------------------------------------------------------


@dataclass
class Route:
    """Where mail for one envelope recipient goes."""

    address: str
    local_domain: bool
    mailboxes: list[Mailbox] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return bool(self.mailboxes or self.remote)


def is_local_domain(name: str) -> bool:
    return Domain.objects.filter(name=name.lower(), active=True).exists()


def route(address: str) -> Route:
    """Expand aliases (catch-alls last, as Postfix's virtual_alias_maps do) to mailboxes and remote targets.

    A mailbox that exists takes precedence over a catch-all of its domain. Raises AddressError for a
    malformed address.
    """
    address = normalize_address(address)
    result = Route(address=address, local_domain=is_local_domain(domain_of(address)))
    if not result.local_domain:
        return result
    seen: set[str] = set()
    _expand(address, result, seen, depth=0)
    return result


def _expand(address: str, result: Route, seen: set[str], depth: int) -> None:
    if address in seen or depth > MAX_ALIAS_DEPTH:
        return
    seen.add(address)
    domain = domain_of(address)
    if not is_local_domain(domain):
        result.remote.append(address)
        return
    targets = list(Alias.objects.filter(source=address).values_list("target", flat=True))
    mailbox = Mailbox.objects.select_related("domain").filter(address=address, active=True).first()
    if mailbox is not None and mailbox not in result.mailboxes:
        result.mailboxes.append(mailbox)
    if not targets and mailbox is None:
        targets = list(Alias.objects.filter(source=f"@{domain}").values_list("target", flat=True))
    for target in targets:
        _expand(target, result, seen, depth + 1)


def first_administrator() -> str | None:
    """On a first run (no superuser yet): create the web UI's administrator `admin` with a random
    password and return that password; None when an administrator exists."""
    User = get_user_model()
    with transaction.atomic():
        if User.objects.filter(is_superuser=True).exists():
            return None
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "", password)
    return password
