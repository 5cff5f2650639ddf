"""What the policy (handler.py) knows of an SMTP session and of its mail transaction.

aiosmtpd calls each hook as `handle_VERB(server, session, envelope, ...)`. The session class
(server.py) makes these objects (`_create_session`, `_create_envelope`) and fills in what the
policy needs as values, so that the handler reads `session` and `envelope` only, never the
protocol object.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiosmtpd.smtp import Envelope, Session

if TYPE_CHECKING:
    from mailcore.authentication.checks import SenderChecks

# What no value that reaches a header may hold: the C0 controls (CR and LF among them), DEL, and
# the surrogates that stand for octets that are not UTF-8 (aiosmtpd decodes with surrogateescape).
_UNSAFE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


@functools.cache
def hook_names(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    """The names of `cls` that start with one of `prefixes`: what aiosmtpd looks for with dir()
    and inspect.getmembers() on each new session, which otherwise read every attribute."""
    return [name for name in dir(cls) if name.startswith(prefixes)]


def unsafe(text: str) -> bool:
    """Whether `text` holds a control character or octets that are not UTF-8 (never into a header)."""
    return _UNSAFE.search(text) is not None


def _no_sessions() -> int:
    return 0


class SMTPSession(Session):
    """aiosmtpd's session (one per connection, and a new one after STARTTLS), plus what our policy
    reads. Set by the session class when the connection (or its TLS layer) is made."""

    def __init__(self, loop) -> None:
        super().__init__(loop)
        self.client_address = ""
        self.server_name = ""  # ours, as the greeting and the EHLO reply give it
        self.ehlo_keywords: list[str] = []  # what the EHLO reply lists, each honoured by the session class
        self.tls = False
        self.tls_cipher = ""  # "TLSv1.3 with cipher ...", for the Received header
        # Mail through this listener follows the recipient domains' policy for unverified mail
        # (not so for an authenticated user's: verified by construction).
        self.unverified_policy_applies = True
        # Whether AUTH with a password may be used now (TLS, loopback, or the operator's say).
        self.auth_allowed = False
        # The listener's open sessions now, across its processes.
        self.open_sessions: Callable[[], int] = _no_sessions
        # An unknown id was asked for with GET in this connection (the handler's guessing check).
        self.asked_for_ids = False
        # The session ends once its next reply is written.
        self.closes_after_reply = False

    @property
    def authenticated_as(self) -> str | None:
        """The user's mailbox address after a successful AUTH in this session (RFC 3207 §4.2:
        STARTTLS starts a new session, which forgets it)."""
        return self.auth_data if self.authenticated else None


class Transaction(Envelope):
    """aiosmtpd's envelope, plus what our policy needs. `mail_from` is None before MAIL, "" for <>."""

    def __init__(self) -> None:
        super().__init__()
        self.body_type = "7BIT"
        self.queue_id: str | None = None  # set by handle_DATA once the message is stored
        # Whether the recipients so far are in domains that refuse unverified mail (§5), as
        # decided at RCPT: a transaction holds only one kind, so that DATA can be refused for
        # all or none, before the body, without asking again.
        self.rejects_unverified: bool | None = None
        # The envelope's authentication checks, started at the first recipient (handler).
        self.sender_checks: asyncio.Future[SenderChecks | None] | None = None


def envelope_fields(session: SMTPSession, transaction: Transaction) -> dict:
    """What the service layer's envelopes (inbound.Envelope, outbound.Submission) take of a
    transaction received by DATA: who sent it to whom, from where, and over what."""
    return {
        "mail_from": transaction.mail_from or "",
        "rcpt_tos": list(transaction.rcpt_tos),
        "client_address": session.client_address,
        "helo_name": session.host_name or "",
        "tls": session.tls,
        "tls_cipher": session.tls_cipher,
    }
