"""DKIM keys of the local domains: made when a domain is added, rotated, published, used to sign.

Each domain signs with two active keys, RSA 2048 and Ed25519 (RFC 8463 asks signers to add an
RSA signature beside an Ed25519 one, for receivers that know only RSA). Rotation makes a new
pair and retires the old one: a retired key signs nothing but stays in `domain dns` output, so
that mail signed just before the rotation still verifies, until the operator withdraws it.
"""

from __future__ import annotations

import logging
import re
import time

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from mailcore.authentication import keys
from mailcore.authentication.checks import from_domain
from mailcore.authentication.resolver import DNSTemporaryError, TXTResolver
from mailcore.authentication.signing import SigningKey, arc_seal, dkim_signatures
from mailcore.models import DKIMKey, DKIMKeyState, Domain
from mailcore.services.domains import AccountError, get_domain

log = logging.getLogger("mailcore.dkim")

TTL = 3600  # of the records that `dns_records` prints


def _selector(domain: Domain, algorithm: str) -> str:
    """`r20261203` / `e20261203`: the kind and the day, and a suffix when that day already has one."""
    base = ("e" if algorithm == keys.ED25519 else "r") + timezone.now().strftime("%Y%m%d")
    taken = set(domain.dkim_keys.filter(selector__startswith=base).values_list("selector", flat=True))
    if base not in taken:
        return base
    n = 2
    while f"{base}n{n}" in taken:
        n += 1
    return f"{base}n{n}"


def _new_pair(domain: Domain) -> list[DKIMKey]:
    made = []
    for algorithm in (keys.RSA, keys.ED25519):
        pair = keys.generate(algorithm)
        made.append(
            DKIMKey.objects.create(
                domain=domain,
                selector=_selector(domain, algorithm),
                algorithm=algorithm,
                private_key=pair.private,
                public_key=pair.public,
            )
        )
    return made


def ensure_keys(domain: Domain) -> list[DKIMKey]:
    """The domain's active keys, made now if it has none (a domain added before keys existed)."""
    active = list(domain.dkim_keys.filter(state=DKIMKeyState.ACTIVE))
    if active:
        return active
    try:
        with transaction.atomic():
            return _new_pair(domain)
    except IntegrityError:  # another process made them at the same moment
        return list(domain.dkim_keys.filter(state=DKIMKeyState.ACTIVE))


def rotate(name: str) -> tuple[list[DKIMKey], list[DKIMKey]]:
    """(new keys, keys retired now): new ones sign from now on, the old stay published."""
    domain = get_domain(name)
    with transaction.atomic():
        old = list(domain.dkim_keys.select_for_update().filter(state=DKIMKeyState.ACTIVE))
        DKIMKey.objects.filter(pk__in=[k.pk for k in old]).update(state=DKIMKeyState.RETIRED, retired_at=timezone.now())
        new = _new_pair(domain)
    _cache.pop(domain.name, None)
    return new, old


def withdraw(name: str, selector: str) -> None:
    """Stop publishing a retired key (it then verifies nothing signed with it)."""
    domain = get_domain(name)
    key = domain.dkim_keys.filter(selector=selector).first()
    if key is None:
        raise AccountError(f"{domain.name} has no DKIM key with selector {selector}")
    if key.state == DKIMKeyState.ACTIVE:
        raise AccountError(f"{selector} is an active key of {domain.name}: rotate first, then withdraw it")
    key.delete()


def list_keys(name: str) -> list[DKIMKey]:
    return list(get_domain(name).dkim_keys.all())


# Active signing keys per domain name, for a few seconds: a stream of outgoing mail does not
# query the keys for every message. (expiry, keys or None for "not ours")
_cache: dict[str, tuple[float, list[SigningKey] | None]] = {}
_CACHE_SECONDS = 10.0


def signing_keys(domain_name: str) -> list[SigningKey] | None:
    """The active keys that sign mail from `domain_name`, or None when it is not a local domain."""
    domain_name = domain_name.lower()
    now = time.monotonic()
    cached = _cache.get(domain_name)
    if cached is not None and cached[0] > now:
        return cached[1]
    domain = Domain.objects.filter(name=domain_name, active=True).first()
    found = None
    if domain is not None:
        found = [SigningKey(k.selector, k.algorithm, k.private_key) for k in ensure_keys(domain)]
        found.sort(key=lambda k: k.algorithm != keys.RSA)  # RSA first
    _cache[domain_name] = (now + _CACHE_SECONDS, found)
    return found


# --- what to publish ---------------------------------------------------------------------------


def dns_records(name: str) -> list[tuple[str, str, str]]:
    """(owner name, type, value in zone-file form) of every record that domain `name` should publish."""
    domain = get_domain(name)
    ensure_keys(domain)
    host = settings.MAIL_HOSTNAME.rstrip(".")
    records = [(f"{domain.name}.", "MX", f"10 {host}.")]
    spf = "v=spf1 mx"
    if settings.MAIL_SMTP_SOURCE_ADDRESS:
        kind = "ip6" if ":" in settings.MAIL_SMTP_SOURCE_ADDRESS else "ip4"
        spf += f" {kind}:{settings.MAIL_SMTP_SOURCE_ADDRESS}"
    records.append((f"{domain.name}.", "TXT", keys.zone_txt(spf + " -all")))
    for key in domain.dkim_keys.all():
        records.append((f"{key.selector}._domainkey.{domain.name}.", "TXT", keys.zone_txt(keys.key_record(key.algorithm, key.public_key))))
    dmarc = f"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@{domain.name}"
    records.append((f"_dmarc.{domain.name}.", "TXT", keys.zone_txt(dmarc)))
    return records


def zone_lines(name: str) -> list[str]:
    """`NAME TTL IN TYPE VALUE`, one record a line, as a zone file takes them."""
    return [f"{owner} {TTL} IN {rtype} {value}" for owner, rtype, value in dns_records(name)]


# --- signing what leaves -----------------------------------------------------------------------


def sign(content: bytes) -> bytes:
    """`content` with DKIM signatures on top when its From: domain is ours (RSA, then Ed25519).

    Mail from other domains (a forwarded message) is returned as it is: we sign only for our own.
    A key or message that dkimpy cannot sign with is logged and the mail goes out unsigned,
    never lost.
    """
    if not settings.MAIL_DKIM_SIGN:
        return content
    domain = from_domain(content)
    found = signing_keys(domain) if domain else None
    if not found:
        return content
    try:
        return dkim_signatures(content, domain, found) + content
    except Exception:
        log.exception("DKIM signing for %s failed; the message leaves unsigned", domain)
        return content


def seal(content: bytes, domain_name: str) -> bytes:
    """`content` with our ARC set on top (RFC 8617 §5.1), sealed with `domain_name`'s RSA key.

    Our Authentication-Results on the message (authserv-id MAIL_HOSTNAME) gives the cv=.
    """
    if not settings.MAIL_DKIM_SIGN:
        return content
    found = signing_keys(domain_name)
    rsa = next((k for k in found or [] if k.algorithm == keys.RSA), None)
    if rsa is None:
        return content
    try:
        return arc_seal(content, domain_name, rsa, settings.MAIL_HOSTNAME) + content
    except Exception:
        log.exception("ARC seal for %s failed; the message is forwarded unsealed", domain_name)
        return content


def _txt_value(zone_value: str) -> str:
    """The TXT value that `keys.zone_txt` wrote, joined again."""
    return "".join(s.replace('\\"', '"').replace("\\\\", "\\") for s in re.findall(r'"((?:[^"\\]|\\.)*)"', zone_value))


def check_published(name: str, resolver=None) -> list[dict]:
    """Each record of `dns_records` with what live DNS says: published, missing, different (or unknown on a DNS error).

    For a TXT record "different" means a record of the same kind (v=spf1, v=DKIM1, v=DMARC1) is
    there with another value; the value found is returned for the operator to compare.
    """
    resolver = resolver or TXTResolver(cached=False)  # what is published now, not what was
    checked = []
    for owner, rtype, value in dns_records(name):
        host = owner.rstrip(".")
        row = {"name": owner, "type": rtype, "value": value, "status": "missing", "found": ""}
        try:
            if rtype == "MX":
                found = [f"{r.preference} {r.exchange.to_text()}" for r in resolver.query(host, "MX")]
                wanted_host = value.split()[1].lower()
                if any(f.split()[1].lower() == wanted_host for f in found):
                    row["status"] = "published"
                elif found:
                    row["status"], row["found"] = "different", "; ".join(found)
            else:
                wanted = _txt_value(value)
                kind = wanted.split(";")[0].split(" ")[0].lower()  # v=spf1, v=DKIM1, v=DMARC1
                found = [t.decode("utf-8", "replace") for t in resolver.txt(host)]
                same_kind = [t for t in found if t.split(";")[0].split(" ")[0].strip().lower() == kind]
                if wanted in found:
                    row["status"] = "published"
                elif same_kind:
                    row["status"], row["found"] = "different", "; ".join(same_kind)
        except DNSTemporaryError as exc:
            row["status"], row["found"] = "unknown", str(exc)
        checked.append(row)
    return checked
