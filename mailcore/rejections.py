"""Why a message is refused before anything of it is stored; the SMTP layer answers each with its own reply."""

from __future__ import annotations


class PolicyRejection(Exception):
    """Every recipient's domain rejects unverified mail (reverse-delivery.md §5)."""


class QuotaExceeded(PolicyRejection):
    """The message would take every recipient's mailbox over its quota: 552 5.2.2 (RFC 3463)."""


class MailLoop(PolicyRejection):
    """Too many Received headers (RFC 5321 §6.3), or our own Delivered-To for a recipient: 554 5.4.6.

    Refused before anything is stored, so it is never forwarded again.
    """


class SenderBlocked(PolicyRejection):
    """Every recipient blocks this sender (a sender list entry for the From header): 550 5.7.1 to DATA."""


class DMARCRejection(PolicyRejection):
    """The From: domain publishes p=reject and the message failed DMARC (RFC 7489 §6.6.4)."""

    def __init__(self, domain: str):
        super().__init__(domain)
        self.domain = domain
