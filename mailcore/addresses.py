"""Parsing and normalising mail addresses and domain names (RFC 5321 §4.1.2, RFC 1035)."""

from __future__ import annotations

import re

_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# The local part: dot-atom text of RFC 5322 §3.2.3 (quoted local parts are not accepted for mailboxes).
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


class AddressError(ValueError):
    """A mail address or domain that is not well formed."""


def normalize_domain(name: str) -> str:
    """Lower-case, IDNA-encoded domain; raises AddressError if it is not a valid host name."""
    name = name.strip().rstrip(".")
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise AddressError(f"invalid domain name: {name!r}") from exc
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise AddressError(f"invalid domain name: {name!r}")
    return ascii_name


def split_address(address: str) -> tuple[str, str]:
    """(local part, normalised domain) of `local@domain`; raises AddressError."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, sep, domain = address.rpartition("@")
    if not sep or not local or len(local) > 64 or not _LOCAL_PART.match(local):
        raise AddressError(f"invalid mail address: {address!r}")
    return local, normalize_domain(domain)


def normalize_address(address: str) -> str:
    """`local@domain` with the domain lower-cased; local parts of our mailboxes are case-insensitive."""
    local, domain = split_address(address)
    return f"{local.lower()}@{domain}"


def domain_of(address: str) -> str:
    """The domain of an address, lower-cased, or '' for the null reverse-path."""
    return address.rpartition("@")[2].strip().rstrip(".>").lower()
