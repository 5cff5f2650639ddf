"""A served domain by the name an operator gives it, and the error of a provisioning request.

Below `accounts` (domains, mailboxes, aliases) and `dkim_keys` (a domain's keys), which both
look domains up by name; `accounts.add_domain` makes the keys of a new domain.
"""

from __future__ import annotations

from mailcore.addresses import AddressError, normalize_domain
from mailcore.models import Domain


class AccountError(Exception):
    """A provisioning request that cannot be carried out; the message is one line for the operator."""


def domain_name(name: str) -> str:
    """`name` normalized as a domain; AccountError when it is not one."""
    try:
        return normalize_domain(name)
    except AddressError as exc:
        raise AccountError(str(exc)) from None


def get_domain(name: str) -> Domain:
    name = domain_name(name)
    try:
        return Domain.objects.get(name=name)
    except Domain.DoesNotExist:
        raise AccountError(f"unknown domain {name}") from None
