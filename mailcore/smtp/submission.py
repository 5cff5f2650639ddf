"""The submission listener (RFC 6409): local users authenticate and hand us mail for anywhere.

`SubmissionSMTP` is the inbound session class with aiosmtpd's AUTH (RFC 4954) instead of SOURCE/GET;
`SubmissionHandler` is its policy and its one boundary into worker threads: who may log in (the
PLAIN and LOGIN mechanisms, RFC 4616, as aiosmtpd's `auth_` hooks, awaited so that the password
hasher runs in a worker thread), which reverse-paths a user may use, and the hand-over to the
outbound service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging

from aiosmtpd.smtp import MISSING, AuthResult
from django.conf import settings

from mailcore.services import accounts, outbound
from mailcore.services.login_failures import LoginFailures
from mailcore.smtp.handler import InboundHandler, TemporaryFault
from mailcore.smtp.server import InboundSMTP, SMTPConfig
from mailcore.smtp.session import SMTPSession, Transaction, envelope_fields
from mailcore.store import spool
from mailcore.wire import replies
from mailcore.wire.replies import Reply
from mailcore.wire.sasl import parse_plain

log = logging.getLogger("mailcore.submission")

# RFC 4954 §6 and RFC 3463 for each AUTH outcome.
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_MALFORMED = Reply(501, "5.5.2", "Cannot decode the authentication data")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH is not permitted during a mail transaction")
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure, try again later")
AUTH_TOO_MANY_FAILURES = Reply(421, "4.7.0", "Too many failed authentications from your address, try again later")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address <{sender}> is not owned by {user}")
SENDER_CHECK_TEMPFAIL = Reply(451, "4.3.0", "Temporary local problem checking the sender, try again later")


class SubmissionHandler(InboundHandler):
    """Policy of the submission port: authenticated users may send anywhere, as themselves."""

    def __init__(self, workers: int | None = None):
        super().__init__(workers)
        # Counted in the database: every submission process (and POP3, and the web sign-in)
        # sees the same failures of an address.
        self.failures = LoginFailures(settings.MAIL_AUTH_MAX_FAILURES, settings.MAIL_AUTH_FAILURE_WINDOW)

    # --- AUTH (RFC 4954): aiosmtpd's smtp_AUTH asks handle_AUTH, then the mechanism -------------

    async def handle_AUTH(self, _server: object, session: SMTPSession, envelope: Transaction, args: list[str]):
        """What aiosmtpd's AUTH does not check: TLS or loopback, the transaction, the failure limit.

        MISSING lets aiosmtpd go on to the mechanism (auth_PLAIN, auth_LOGIN below).
        """
        if envelope.mail_from is not None:
            return str(AUTH_IN_TRANSACTION)
        if not session.auth_allowed:
            return str(AUTH_NEEDS_TLS)
        try:
            blocked = await self.auth_blocked(session.client_address)
        except TemporaryFault:
            return str(AUTH_TEMPFAIL)
        if blocked:
            return _refuse_blocked(session)
        return MISSING

    # The mechanisms are aiosmtpd's `auth_` hooks: they get the protocol object, which is how a
    # mechanism talks to the client (challenge_auth, reply); what they know is read off its session.

    async def auth_PLAIN(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        """RFC 4616: [authzid] NUL authcid NUL passwd, checked in a worker thread (the hasher)."""
        decoded = await _initial_or_challenge(server, args, "")
        if decoded is None:
            return AuthResult(success=False, handled=True)
        plain = parse_plain(decoded)
        if plain is None:
            await server.reply(AUTH_MALFORMED)
            return AuthResult(success=False, handled=True)
        if plain.acts_for_another():
            return AuthResult(success=False, handled=False)  # aiosmtpd's 535 5.7.8
        return await self._check(server, "PLAIN", plain.authcid, plain.password)

    async def auth_LOGIN(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        """The LOGIN mechanism (draft-murchison-sasl-login): username and password prompts."""
        username = await _initial_or_challenge(server, args, "Username:")
        if username is None:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._check(server, "LOGIN", username.decode("utf-8", "replace"), password.decode("utf-8", "replace"))

    async def _check(self, server: SubmissionSMTP, mechanism: str, username: str, password: str) -> AuthResult:
        session = server.session
        try:
            user = await self.authenticate(session.client_address, username, password)
            blocked = user is None and await self.auth_blocked(session.client_address)
        except accounts.LoginBlocked:
            user, blocked = None, True
        except TemporaryFault:
            await server.reply(AUTH_TEMPFAIL)
            return AuthResult(success=False, handled=True)
        if user is None:
            log.info("%s: AUTH %s failed for %r", session.client_address, mechanism, username[:100])
            if blocked:
                await server.push(_refuse_blocked(session))
                return AuthResult(success=False, handled=True)
            return AuthResult(success=False, handled=False)  # aiosmtpd's 535 5.7.8
        log.info("%s: AUTH %s as %s", session.client_address, mechanism, user)
        return AuthResult(success=True, auth_data=user)

    async def auth_blocked(self, client_address: str) -> bool:
        """Whether `client_address` reached the failed-login limit (TemporaryFault if the count is unreachable)."""
        return await self.call(self.failures.blocked, client_address)

    async def authenticate(self, client_address: str, username: str, password: str) -> str | None:
        """The mailbox address for these credentials, or None (after the failure delay).

        Raises LoginBlocked when the address reached the failed-login limit, this attempt included.
        """
        mailbox = await self.call(accounts.login, client_address, username, password, self.failures)
        if mailbox is not None:
            return mailbox.address
        # RFC 4954 §4 leaves the delay to us: it makes guessing slow without locking anyone out.
        await asyncio.sleep(settings.MAIL_AUTH_FAILURE_DELAY)
        return None

    # --- the transaction -----------------------------------------------------------------------

    async def sender_verdict(self, session: SMTPSession, sender: str) -> Reply:
        """RFC 6409 §4.3: the user may only send as their own mailbox or one of its aliases."""
        user = session.authenticated_as
        try:
            allowed = await self.call(outbound.may_send_as, user, sender)
        except TemporaryFault:
            return SENDER_CHECK_TEMPFAIL
        return replies.SENDER_OK if allowed else SENDER_NOT_OWNED(sender=sender, user=user)

    async def recipient_verdict(self, session: SMTPSession, envelope: Transaction, address: str) -> tuple[Reply, str | None]:
        """Any remote recipient; a local one must exist (we know now, so say so now)."""
        try:
            await self.call(outbound.check_submission_recipient, address)
        except outbound.SubmissionError as exc:
            code, status, text = exc.reply.split(" ", 2)
            return Reply(int(code), status, text), None
        except TemporaryFault:
            return replies.RECIPIENT_TEMPFAIL, None
        return replies.RECIPIENT_OK, None

    async def deliver(self, session: SMTPSession, transaction: Transaction) -> tuple[Reply, str | None]:
        """Local recipients now, remote ones queued; 250 only once all of it is committed."""
        submission = outbound.Submission(
            **envelope_fields(session, transaction),
            # RFC 3848: ESMTPA, or ESMTPSA with TLS.
            protocol="ESMTPSA" if session.tls else "ESMTPA",
            authenticated_as=session.authenticated_as or "",
        )
        try:
            receipt = await self.call(_submit, submission, transaction.content)
        except outbound.SubmissionError as exc:
            code, status, text = exc.reply.split(" ", 2)
            return Reply(int(code), status, text), None
        except TemporaryFault:
            return replies.TEMPORARY_FAILURE, None
        return replies.QUEUED(queue_id=receipt.queue_id), receipt.queue_id


def _refuse_blocked(session: SMTPSession) -> str:
    """The 421 for an address with too many failed logins; the session closes after it."""
    log.warning("%s: too many failed authentications, closing", session.client_address)
    session.closes_after_reply = True
    return str(AUTH_TOO_MANY_FAILURES)


async def _initial_or_challenge(server: SubmissionSMTP, args: list[str], prompt: str) -> bytes | None:
    """The initial response of `AUTH mechanism response`, or the answer to a 334 challenge.

    None when the client cancelled or sent something that is not base64 (answered already).
    """
    if len(args) < 2:
        answer = await server.challenge_auth(prompt)  # aiosmtpd's: answers "*" and bad base64
        return None if answer is MISSING else answer
    if args[1] == "=":  # an empty initial response (RFC 4954 §4)
        return b""
    try:
        return base64.b64decode(args[1], validate=True)
    except (binascii.Error, ValueError):
        await server.reply(AUTH_MALFORMED)
        return None


def _submit(submission: outbound.Submission, content: bytes | list) -> outbound.SubmissionReceipt:
    # A large message is read whole from its spool here, in a worker thread: signing it (DKIM)
    # and queueing it take it as one bytes object.
    # RFC 6409 §8.2, §8.3: the submission server may add a missing Date and Message-ID.
    content = outbound.add_missing_headers(spool.joined(content), submission.mail_from)
    return outbound.submit(submission, content)


class SubmissionSMTP(InboundSMTP):
    """One session on the submission port: aiosmtpd's AUTH, required before MAIL, RCPT and DATA."""

    offers_auth = True
    offers_source = False

    def __init__(self, handler: SubmissionHandler, config: SMTPConfig, registry, *, plaintext_auth: str = "loopback"):
        # TLS (or loopback) is checked by handle_AUTH, which knows the operator's setting.
        super().__init__(handler, config, registry, auth_required=True, auth_require_tls=False)
        self.plaintext_auth = plaintext_auth  # loopback | always | never

    # Mail from an authenticated local user is verified by construction.
    unverified_policy_applies = False

    def describe_session(self, session: SMTPSession) -> None:
        session.auth_allowed = self.auth_allowed()
        super().describe_session(session)

    def auth_allowed(self) -> bool:
        """AUTH with a password only under TLS, on loopback, or where the operator allows it."""
        if self.tls_active() or self.plaintext_auth == "always":
            return True
        if self.plaintext_auth != "loopback":
            return False
        try:
            return ipaddress.ip_address(self.client_address).is_loopback
        except ValueError:
            return False

    def ehlo_keywords(self) -> list[str]:
        keywords = super().ehlo_keywords()
        if self.auth_allowed():
            keywords.append("AUTH PLAIN LOGIN")  # RFC 4954 §3
        return keywords
