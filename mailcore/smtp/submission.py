"""The submission listener (RFC 6409): local users authenticate and hand us mail for anywhere.

`SubmissionSMTP` is the inbound protocol class with AUTH PLAIN/LOGIN (RFC 4954, 4616) instead of
SOURCE/GET; `SubmissionHandler` is its policy and its one boundary into worker threads: who may log in,
which reverse-paths a user may use, and the hand-over to the outbound service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging

from django.conf import settings

from mailcore.services import accounts, outbound
from mailcore.services.login_failures import LoginFailures
from mailcore.smtp import replies
from mailcore.smtp.handler import InboundHandler, TemporaryFault
from mailcore.smtp.replies import Reply
from mailcore.smtp.server import InboundSMTP, SMTPConfig

log = logging.getLogger("mailcore.submission")

# RFC 4954 §6 and RFC 3463 for each AUTH outcome.
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_MALFORMED = Reply(501, "5.5.2", "Cannot decode the authentication data")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH is not permitted during a mail transaction")
AUTH_NEEDS_EHLO = Reply(503, "5.5.1", "Send EHLO first")
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

    async def sender_verdict(self, user: str, sender: str) -> Reply:
        try:
            allowed = await self.call(outbound.may_send_as, user, sender)
        except TemporaryFault:
            return SENDER_CHECK_TEMPFAIL
        return replies.SENDER_OK if allowed else SENDER_NOT_OWNED(sender=sender, user=user)

    async def recipient_verdict(self, server: InboundSMTP, address: str) -> tuple[Reply, str | None]:
        """Any remote recipient; a local one must exist (we know now, so say so now)."""
        try:
            await self.call(outbound.check_submission_recipient, address)
        except outbound.SubmissionError as exc:
            code, status, text = exc.reply.split(" ", 2)
            return Reply(int(code), status, text), None
        except TemporaryFault:
            return replies.RECIPIENT_TEMPFAIL, None
        return replies.RECIPIENT_OK, None

    async def deliver(self, server: SubmissionSMTP, content: bytes) -> tuple[Reply, str | None]:
        """Local recipients now, remote ones queued; 250 only once all of it is committed."""
        envelope = server.envelope
        tls = server.tls_active()
        submission = outbound.Submission(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            client_address=server.client_address,
            helo_name=server.session.host_name or "",
            tls=tls,
            tls_cipher=server._tls_description(),
            # RFC 3848: ESMTPA, or ESMTPSA with TLS.
            protocol="ESMTPSA" if tls else "ESMTPA",
            authenticated_as=server.authenticated_as or "",
        )
        try:
            receipt = await self.call(_submit, submission, content)
        except outbound.SubmissionError as exc:
            code, status, text = exc.reply.split(" ", 2)
            return Reply(int(code), status, text), None
        except TemporaryFault:
            return replies.TEMPORARY_FAILURE, None
        return replies.QUEUED(queue_id=receipt.queue_id), receipt.queue_id


def _submit(submission: outbound.Submission, content: bytes) -> outbound.SubmissionReceipt:
    # RFC 6409 §8.2, §8.3: the submission server may add a missing Date and Message-ID.
    content = outbound.add_missing_headers(content, submission.mail_from)
    return outbound.submit(submission, content)


class SubmissionSMTP(InboundSMTP):
    """One session on the submission port."""

    offers_auth = True
    offers_source = False

    def __init__(self, handler: SubmissionHandler, config: SMTPConfig, registry, *, plaintext_auth: str = "loopback"):
        super().__init__(handler, config, registry)
        self.plaintext_auth = plaintext_auth  # loopback | always | never

    @property
    def authenticated_as(self) -> str | None:
        # Kept on the session: STARTTLS starts a new one, which forgets it (RFC 3207 §4.2).
        return getattr(self.session, "mailbox_address", None) if self.session else None

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

    def unverified_policy_applies(self) -> bool:
        # Mail from an authenticated local user is verified by construction.
        return False

    # --- AUTH (RFC 4954) -----------------------------------------------------------------------

    async def smtp_AUTH(self, arg: str | None) -> None:
        if not self.session.host_name or not self.session.extended_smtp:
            await self.reply(AUTH_NEEDS_EHLO)
            return
        if self.authenticated_as:
            await self.reply(AUTH_ALREADY)
            return
        if self.in_transaction:
            await self.reply(AUTH_IN_TRANSACTION)
            return
        if not arg:
            await self.reply(replies.BAD_SYNTAX(usage="AUTH mechanism [initial-response]"))
            return
        if not self.auth_allowed():
            await self.reply(AUTH_NEEDS_TLS)
            return
        try:
            blocked = await self.event_handler.auth_blocked(self.client_address)
        except TemporaryFault:
            await self.reply(AUTH_TEMPFAIL)
            return
        if blocked:
            await self._refuse_blocked()
            return
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            credentials = await self._auth_plain(initial.strip())
        elif mechanism == "LOGIN":
            credentials = await self._auth_login(initial.strip())
        else:
            await self.reply(AUTH_UNKNOWN_MECHANISM)
            return
        if credentials is None:
            return  # cancelled or malformed: already answered
        username, password = credentials
        try:
            user = await self.event_handler.authenticate(self.client_address, username, password)
            blocked = user is None and await self.event_handler.auth_blocked(self.client_address)
        except accounts.LoginBlocked:
            user, blocked = None, True
        except TemporaryFault:
            await self.reply(AUTH_TEMPFAIL)
            return
        if user is None:
            log.info("%s: AUTH %s failed for %r", self.client_address, mechanism, username[:100])
            if blocked:
                await self._refuse_blocked()
                return
            await self.reply(AUTH_INVALID)
            return
        self.session.mailbox_address = user
        log.info("%s: AUTH %s as %s", self.client_address, mechanism, user)
        await self.reply(AUTH_OK)

    async def _refuse_blocked(self) -> None:
        log.warning("%s: too many failed authentications, closing", self.client_address)
        await self.push(str(AUTH_TOO_MANY_FAILURES))
        self.close()

    async def _challenge(self, prompt: str) -> bytes | None:
        """Send a 334 challenge and decode the client's base64 answer; None when answered already."""
        await self.push(f"334 {prompt}")
        line = await self.read_line()
        if line is None:
            self.close()
            return None
        if isinstance(line, Reply):
            await self.reply(line)
            return None
        return await self._decode(line.rstrip(b"\r\n"))

    async def _decode(self, data: bytes) -> bytes | None:
        if data == b"*":  # RFC 4954 §4: the client cancels
            await self.reply(AUTH_CANCELLED)
            return None
        if data == b"=":  # an empty initial response
            return b""
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            await self.reply(AUTH_MALFORMED)
            return None

    async def _auth_plain(self, initial: str) -> tuple[str, str] | None:
        """RFC 4616: [authzid] NUL authcid NUL passwd."""
        if initial:
            decoded = await self._decode(initial.encode("ascii", "replace"))
        else:
            decoded = await self._challenge("")
        if decoded is None:
            return None
        parts = decoded.split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            await self.reply(AUTH_MALFORMED)
            return None
        authzid, authcid, password = (p.decode("utf-8", "replace") for p in parts)
        if authzid and authzid.lower() != authcid.lower():
            # Acting as another user is not offered: only the mailbox that logs in.
            await self.reply(AUTH_INVALID)
            return None
        return authcid, password

    async def _auth_login(self, initial: str) -> tuple[str, str] | None:
        """The LOGIN mechanism (draft-murchison-sasl-login): username and password prompts."""
        if initial:
            username = await self._decode(initial.encode("ascii", "replace"))
        else:
            username = await self._challenge("VXNlcm5hbWU6")  # "Username:"
        if username is None:
            return None
        password = await self._challenge("UGFzc3dvcmQ6")  # "Password:"
        if password is None:
            return None
        return username.decode("utf-8", "replace"), password.decode("utf-8", "replace")

    # --- the transaction -----------------------------------------------------------------------

    async def sender_verdict(self, address: str) -> Reply:
        """RFC 6409 §4.3: the user may only send as their own mailbox or one of its aliases."""
        if not self.authenticated_as:
            return AUTH_REQUIRED
        return await self.event_handler.sender_verdict(self.authenticated_as, address)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not self.authenticated_as:
            await self.reply(AUTH_REQUIRED)
            return
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str | None) -> None:
        if not self.authenticated_as:
            await self.reply(AUTH_REQUIRED)
            return
        await super().smtp_DATA(arg)
