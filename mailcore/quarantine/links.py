"""Signed links for the digest: release, delete or always allow, one message of one mailbox, no sign-in.

A link is a capability: whoever holds it may do its one action on its one message, until the
message leaves the quarantine by retention. The token is signed with Django's signing (the
SECRET_KEY, a salt of its own), and names the delivery, its mailbox, the action and the expiry,
so that a link of one message or mailbox does nothing for another, and an altered one fails.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core import signing
from django.urls import reverse

ACTIONS = ("release", "delete", "allow")
_SALT = "mailcore.quarantine.link"


class LinkError(Exception):
    """A token that is not ours, altered, for another action, or expired."""

    status = 400


class LinkExpired(LinkError):
    status = 410


@dataclass(frozen=True)
class Link:
    delivery_id: int
    mailbox_id: int
    action: str
    expires: int  # a Unix time

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, UTC)


def expires_at(delivery) -> datetime:
    """When held mail leaves the quarantine by retention, and its links stop working."""
    return delivery.delivered_at + timedelta(days=settings.MAIL_QUARANTINE_RETENTION_DAYS)


def token(delivery, action: str) -> str:
    if action not in ACTIONS:
        raise ValueError(action)
    payload = {"d": delivery.pk, "m": delivery.mailbox_id, "a": action, "e": int(expires_at(delivery).timestamp())}
    return signing.dumps(payload, salt=_SALT, compress=False)


def read(value: str, action: str) -> Link:
    """The link that `value` carries, for `action`; LinkError or LinkExpired otherwise."""
    try:
        payload = signing.loads(value, salt=_SALT)
        link = Link(int(payload["d"]), int(payload["m"]), str(payload["a"]), int(payload["e"]))
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise LinkError("This link is not valid.") from None
    if link.action != action:
        raise LinkError("This link is not valid.")
    if link.expires <= time.time():
        raise LinkExpired("This link has expired: the message has left the quarantine.")
    return link


def link_id(value: str) -> str:
    """A short name of one link for the audit log (the token itself would be a working capability)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def url(delivery, action: str) -> str:
    return settings.MAIL_WEB_URL + reverse("quarantine-link", args=[action, token(delivery, action)])
