"""The MX listener's policy, and its one boundary into the service layer (worker threads).

The session class (server.py, aiosmtpd's SMTP class) decides what is well-formed and in
sequence; this handler decides what is acceptable (who exists, who may be relayed to, what is
delivered), asked through aiosmtpd's hooks (`handle_EHLO`, `handle_MAIL`, `handle_RCPT`,
`handle_DATA`, and `handle_SOURCE` for our verb), by calling services in worker threads. It
reads and writes only the hooks' `session` and `envelope` (session.py): the protocol object,
which aiosmtpd passes first, is not read. Every database or file-system call of a session goes
through `call`, or, for the lone message of a lone session, `call_here` (both through one
database_bridge.DatabaseBridge).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from django.conf import settings
from django.db import DatabaseError, connections

from mailcore.addresses import domain_of
from mailcore.database_bridge import DatabaseBridge
from mailcore.models import Transport, UnverifiedPolicy, Verification
from mailcore.services import inbound, reverse_delivery, senders
from mailcore.services.login_failures import AddressCounter
from mailcore.smtp.groupcommit import GroupCommit
from mailcore.smtp.session import SMTPSession, Transaction, envelope_fields, hook_names, unsafe
from mailcore.spam.check import SpamRejection
from mailcore.store import message_store
from mailcore.store.bodies import CHUNK_SIZE
from mailcore.wire import replies
from mailcore.wire.replies import Reply

log = logging.getLogger("mailcore.smtp")


class TooManyUnknownIds(Exception):
    """This client asked for too many unknown GET ids this minute (reverse-delivery.md §6)."""


class TemporaryFault(Exception):
    """Our own fault (database, store): the client gets 4xx and tries again (style.md)."""


def _sqlite_writer_lock_path() -> str | None:
    """The file whose flock(2) orders SQLite's writers across listener processes; None off SQLite."""
    if connections["default"].vendor != "sqlite":
        return None
    return f"{connections['default'].settings_dict['NAME']}.writer-lock"


@contextlib.contextmanager
def _faults_as_temporary() -> Iterator[None]:
    """The database or the store failing is our fault, and temporary: TemporaryFault (4xx)."""
    try:
        yield
    except DatabaseError as exc:
        log.warning("database unavailable: %s", exc)
        raise TemporaryFault(str(exc)) from exc
    except OSError as exc:
        log.warning("message store unavailable: %s", exc)
        raise TemporaryFault(str(exc)) from exc


class InboundHandler:
    """Policy of the inbound MX: local recipients only, unverified-mail policy, reverse delivery."""

    def __init__(self, workers: int | None = None):
        # A pool rather than asgiref's single thread: deliveries fsync their bodies in parallel,
        # and each worker thread keeps its own database connection.
        self.executor = ThreadPoolExecutor(
            max_workers=workers or settings.MAIL_SMTP_WORKER_THREADS, thread_name_prefix="smtp-services"
        )
        self.database = DatabaseBridge(self.executor)
        # SPF, DKIM, DMARC and ARC wait on DNS: threads of their own, so that a slow resolver
        # never holds up the threads that store and commit other sessions' mail.
        self.auth_executor = ThreadPoolExecutor(max_workers=settings.MAIL_AUTH_WORKER_THREADS, thread_name_prefix="smtp-auth")
        # Messages received by DATA are stored and committed in batches across sessions.
        self.group_commit = GroupCommit(
            self.call,
            self.call_here,
            settings.MAIL_SMTP_COMMIT_BATCH,
            settings.MAIL_SMTP_COMMITTERS,
            settings.MAIL_SMTP_RECIPIENT_CACHE,
            writer_lock_path=_sqlite_writer_lock_path(),
        )
        # RCPT verdicts of the last few seconds (address -> (expiry, check)): a sender's next
        # message to the same mailbox needs no trip to the database before its 250.
        self.recipient_cache: dict[str, tuple[float, inbound.RecipientCheck]] = {}
        self.recipient_cache_seconds = settings.MAIL_SMTP_RECIPIENT_CACHE
        self.unknown_ids = AddressCounter("unknown-get-ids", settings.MAIL_GET_MAX_UNKNOWN_PER_MINUTE, 60.0)
        self._guessers: dict[str, float] = {}  # address -> until when its unknown ids are checked

    async def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """The one boundary between the event loop and the (blocking) service layer."""
        # The listener's own pool, not asgiref's single thread: these calls need no thread
        # shared with other sync code, and each worker keeps its own connection.
        with _faults_as_temporary():
            return await self.database.run(fn, *args, **kwargs)

    def call_here(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """`call`, in the event loop's own thread, which it blocks until `fn` returns.

        Only for a lone message of a lone session (GroupCommit.deliver): the loop has nothing
        else to do meanwhile, and the worker thread that would have done it instead sleeps
        between messages and wakes up slow (twice the CPU time for the same stage and commit).
        """
        with _faults_as_temporary():
            return self.database.run_here(fn, *args, **kwargs)

    def close(self) -> None:
        """Wait for deliveries in flight to commit, then stop the workers."""
        self.executor.shutdown(wait=True)
        self.auth_executor.shutdown(wait=True)

    async def authenticate(self, transaction: Transaction, envelope: inbound.Envelope, content: bytes | list) -> inbound.Envelope:
        """SPF, DKIM, DMARC and ARC: in an authentication thread (no database there), or here
        when the envelope's checks left nothing to look up (no thread to wait for)."""
        if not settings.MAIL_AUTH_CHECKS:
            return envelope
        sender = await transaction.sender_checks if transaction.sender_checks is not None else None
        checked = inbound.authenticate_at_once(envelope, content, sender)
        if checked is not None:
            return checked
        return await asyncio.get_running_loop().run_in_executor(
            self.auth_executor, inbound.authenticate, envelope, content, sender
        )

    def __dir__(self) -> list[str]:
        """Only aiosmtpd's hooks: each session lists them (dir, inspect.getmembers) when it starts."""
        return hook_names(type(self), ("handle_", "auth_"))

    # --- the greeting --------------------------------------------------------------------------

    async def handle_EHLO(self, _server: object, session: SMTPSession, envelope: Transaction, hostname: str,
                          responses: list[str]) -> list[str]:
        """The EHLO reply (RFC 5321 §4.1.1.1) in place of aiosmtpd's, with our keywords."""
        name = hostname.split()[0]
        if unsafe(name):
            # The name goes into the Received header: no control characters, nothing not UTF-8.
            session.host_name = None
            return [str(replies.BAD_HELO_NAME)]
        session.host_name = name
        *lines, last = [session.server_name, *session.ehlo_keywords]
        return [*(f"250-{line}" for line in lines), f"250 {last}"]

    async def handle_HELO(self, _server: object, session: SMTPSession, envelope: Transaction, hostname: str) -> str:
        name = hostname.split()[0]
        if unsafe(name):
            session.host_name = None
            return str(replies.BAD_HELO_NAME)
        session.host_name = name
        return f"250 {session.server_name}"

    # --- MAIL ----------------------------------------------------------------------------------

    async def handle_MAIL(self, _server: object, session: SMTPSession, envelope: Transaction, address: str,
                          mail_options: list[str]) -> str:
        """The reply to a well-formed `MAIL FROM:<address>`; records the sender when it is taken."""
        verdict = await self.sender_verdict(session, address)
        if verdict.code == 250:
            envelope.mail_from = address
            envelope.mail_options = list(mail_options)
        return str(verdict)

    async def sender_verdict(self, session: SMTPSession, address: str) -> Reply:
        """Whether this sender may start a transaction; the MX takes any (the submission port may not)."""
        return replies.SENDER_OK

    # --- RCPT ----------------------------------------------------------------------------------

    async def handle_RCPT(self, _server: object, session: SMTPSession, envelope: Transaction, address: str,
                          rcpt_options: list[str]) -> str:
        """The reply to a well-formed `RCPT TO:<address>`; adds the recipient when it is taken.

        The recipient domain's policy for unverified mail is decided here, once, and kept on the
        envelope (`rejects_unverified`), where DATA finds it.
        """
        verdict, policy = await self.recipient_verdict(session, envelope, address)
        if verdict.code == 250:
            rejects = session.unverified_policy_applies and self.rejects_unverified(policy)
            if envelope.rcpt_tos and rejects != envelope.rejects_unverified:
                verdict = replies.POLICY_MIXES
            else:
                envelope.rejects_unverified = rejects
                if not envelope.rcpt_tos:
                    self.start_sender_checks(session, envelope)
                if address not in envelope.rcpt_tos:
                    envelope.rcpt_tos.append(address)
        return str(verdict)

    def start_sender_checks(self, session: SMTPSession, envelope: Transaction) -> None:
        """SPF and the reverse-path domain's DMARC record, made while the client sends the message.

        Started at the first recipient taken, not at MAIL: a transaction with no recipient
        costs no lookups. Made here when every answer is in the DNS cache (no thread to wait
        for), else in an authentication thread.
        """
        if not settings.MAIL_AUTH_CHECKS:
            return
        identity = (session.client_address, envelope.mail_from or "", session.host_name or "")
        loop = asyncio.get_running_loop()
        sender = inbound.check_sender(*identity, at_once=True)
        if sender is None:
            envelope.sender_checks = loop.run_in_executor(self.auth_executor, inbound.check_sender, *identity)
        else:
            envelope.sender_checks = loop.create_future()
            envelope.sender_checks.set_result(sender)

    async def recipient_verdict(self, session: SMTPSession, envelope: Transaction, address: str) -> tuple[Reply, str | None]:
        """The reply to `RCPT TO:<address>`, and the recipient domain's unverified-mail policy."""
        try:
            check = await self.checked_recipient(address)
        except TemporaryFault:
            return replies.RECIPIENT_TEMPFAIL, None
        if not check.valid:
            return replies.BAD_RECIPIENT_SYNTAX, None
        if not check.local_domain:
            # Relaying is the submission listener's job, for authenticated users only.
            return replies.RELAY_DENIED, None
        if not check.exists:
            return replies.USER_UNKNOWN, None
        if check.full:
            return replies.MAILBOX_FULL, None
        return self.sender_list_verdict(session, envelope, check)

    @staticmethod
    def sender_list_verdict(session: SMTPSession, envelope: Transaction, check: inbound.RecipientCheck) -> tuple[Reply, str | None]:
        """The recipient's sender lists on what RCPT knows: the envelope sender and the client.

        A block refuses this recipient now (operations.md: 550 5.7.1 at RCPT); an allow lifts its
        domain's policy for unverified mail, "reject" included, so DATA is not refused before the body.
        """
        decision = check.senders.decide(envelope.mail_from or "", session.client_address)
        if decision == senders.BLOCK:
            return replies.SENDER_BLOCKED, None
        if decision == senders.ALLOW:
            return replies.RECIPIENT_OK, UnverifiedPolicy.ACCEPT
        return replies.RECIPIENT_OK, check.policy

    async def checked_recipient(self, address: str) -> inbound.RecipientCheck:
        key = address
        now = asyncio.get_running_loop().time()
        cached = self.recipient_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        check = await self.call(inbound.check_recipient, address)
        # A verdict about a mailbox with a quota changes with every message: never reused.
        if self.recipient_cache_seconds > 0 and not check.has_quota:
            if len(self.recipient_cache) >= 10000:  # a dictionary attack must not grow it forever
                self.recipient_cache = {k: v for k, v in self.recipient_cache.items() if v[0] > now}
                if len(self.recipient_cache) >= 10000:
                    self.recipient_cache.clear()
            self.recipient_cache[key] = (now + self.recipient_cache_seconds, check)
        return check

    # --- DATA ----------------------------------------------------------------------------------

    async def handle_DATA(self, _server: object, session: SMTPSession, envelope: Transaction) -> str:
        """The reply once the message (`envelope.content`) has been read: 250 only once it is durable."""
        result, envelope.queue_id = await self.deliver(session, envelope)
        return str(result)

    async def deliver(self, session: SMTPSession, transaction: Transaction) -> tuple[Reply, str | None]:
        """Store and deliver a message received by DATA: (reply, queue id or None)."""
        content = transaction.content
        envelope = await self.authenticate(transaction, delivery_envelope(session, transaction), content)
        try:
            # spamd is asked per message, before the batch, so that one slow verdict never holds
            # back the other sessions' messages (none when the spam check is off).
            spam = await self.call(inbound.spam_verdict, envelope, content) if settings.MAIL_SPAMD else None
            receipt = await self.group_commit.deliver(envelope, content, spam, alone=session.open_sessions() <= 1)
        except (DatabaseError, OSError) as exc:
            log.warning("delivery failed: %s", exc)
            return replies.TEMPORARY_FAILURE, None
        except inbound.QuotaExceeded:  # PolicyRejections too: these clauses come first
            return replies.QUOTA_EXCEEDED, None
        except inbound.MailLoop as exc:
            return replies.MAIL_LOOP(why=str(exc)), None
        except SpamRejection as exc:  # a PolicyRejection too: this clause comes first
            return replies.SPAM_REFUSED(score=f"{exc.score:.1f}"), None
        except inbound.SenderBlocked:  # a PolicyRejection too
            return replies.SENDER_BLOCKED, None
        except inbound.DMARCRejection as exc:  # a PolicyRejection too
            return replies.DMARC_REJECTED(domain=exc.domain), None
        except inbound.PolicyRejection:
            return replies.ONLY_VERIFIED(domain=domain_of(envelope.rcpt_tos[0])), None
        except TemporaryFault:
            return replies.TEMPORARY_FAILURE, None
        except Exception:
            # Our fault with this one message (it failed alone: GroupCommit): 4xx, and the session goes on.
            log.exception("delivery failed")
            return replies.TEMPORARY_FAILURE, None
        return replies.QUEUED(queue_id=receipt.queue_id), receipt.queue_id

    # --- SOURCE (reverse-delivery.md §3, receiving role) ---------------------------------------

    async def handle_SOURCE(self, _server: object, session: SMTPSession, envelope: Transaction, source_id: str) -> str:
        return str(await self.announce(session, envelope, source_id))

    async def announce(self, session: SMTPSession, envelope: Transaction, source_id: str) -> Reply:
        try:
            result = await self.call(
                reverse_delivery.announce,
                source_id,
                envelope.mail_from,
                list(envelope.rcpt_tos),
                session.client_address,
                session.host_name or "",
            )
        except TemporaryFault:
            return replies.TEMPORARY_FAILURE
        if result is reverse_delivery.AnnounceResult.ALREADY_ANNOUNCED:
            return replies.SOURCE_ALREADY_ANNOUNCED(id=source_id)
        if result is reverse_delivery.AnnounceResult.TOO_MANY_FROM_CLIENT:
            return replies.SOURCE_TOO_MANY_PENDING(what="your address")
        if result is reverse_delivery.AnnounceResult.TOO_MANY_FROM_CLIENT_FOR_DOMAIN:
            return replies.SOURCE_TOO_MANY_PENDING(what=f"your address for the domain {domain_of(envelope.mail_from)}")
        if result is reverse_delivery.AnnounceResult.TOO_MANY_FROM_DOMAIN:
            return replies.SOURCE_TOO_MANY_PENDING(what=f"the domain {domain_of(envelope.mail_from)}")
        return replies.SOURCE_ACCEPTED(id=source_id)

    # --- GET (reverse-delivery.md §4, origin role) ---------------------------------------------

    async def fetch(self, session: SMTPSession, source_id: str) -> tuple[Reply, reverse_delivery.SourcedBody | None]:
        """The reply to `GET <id>` and the body to send; GET_TOO_MANY_UNKNOWN means: close now."""
        try:
            first = not session.asked_for_ids
            body = await self.call(self.fetch_unless_guessing, source_id, session.client_address, first)
            session.asked_for_ids = session.asked_for_ids or body is None
        except TooManyUnknownIds:
            return replies.GET_TOO_MANY_UNKNOWN, None
        except reverse_delivery.FetchRefused:
            return replies.GET_REFUSED(id=source_id), None
        except TemporaryFault:
            return replies.TEMPORARY_FAILURE, None
        except Exception:  # a DNS failure in strict mode, say: ours, so temporary
            log.exception("GET %s failed", source_id)
            return replies.TEMPORARY_FAILURE, None
        if body is None:
            return replies.GET_UNKNOWN(id=source_id), None
        return replies.GET_MESSAGE_FOLLOWS(id=source_id), body

    def fetch_unless_guessing(
        self, source_id: str, client_address: str, first_of_session: bool = True
    ) -> reverse_delivery.SourcedBody | None:
        """(worker thread) The sourced body, unless this address asked for too many unknown ids.

        reverse-delivery.md §6 "Guessing ids": unknown-id GETs are counted per client address in
        the database, so every listener process and node of this origin meets one count.
        """
        # Spec §6, Fair pulls: an id we know is served whatever the count, so that a receiver
        # whose address reached the limit (bogus ids announced to it in our name) still gets
        # genuine mail on its next connection; only the next unknown id gets 421 again.
        body = reverse_delivery.fetch_sourced(source_id, client_address)
        if body is not None:
            return body
        # The shared count is read at a session's first unknown id, and then only while this
        # address has asked this process for unknown ids lately: an origin's pull pipelines many
        # GETs on one connection and pays for one cache query, and a guesser meets the count
        # whichever process or node it connects to.
        now = time.monotonic()
        suspect = first_of_session or self._guessers.get(client_address, 0.0) > now
        if suspect and self.unknown_ids.blocked(client_address):
            raise TooManyUnknownIds
        self.unknown_ids.record(client_address)
        if len(self._guessers) >= 10000:
            self._guessers = {a: t for a, t in self._guessers.items() if t > now}
        self._guessers[client_address] = now + 2 * self.unknown_ids.window
        return None

    async def open_body(self, body_ref: str) -> BinaryIO:
        return await self.call(message_store().open, body_ref)

    async def body_chunks(self, stream: BinaryIO) -> AsyncIterator[bytes]:
        """The stored body in chunks, each read in a worker thread: never all of it in memory."""
        loop = asyncio.get_running_loop()
        try:
            while chunk := await loop.run_in_executor(self.executor, stream.read, CHUNK_SIZE):
                yield chunk
        finally:
            await loop.run_in_executor(self.executor, stream.close)

    # --- policy --------------------------------------------------------------------------------

    @staticmethod
    def rejects_unverified(policy: str | None) -> bool:
        return policy == UnverifiedPolicy.REJECT


# aiosmtpd reads handle_EHLO's signature on each new session (to tell its old four-argument form);
# a function's __signature__ is returned by inspect.signature without parsing the function again.
InboundHandler.handle_EHLO.__signature__ = inspect.signature(InboundHandler.handle_EHLO)


def received_protocol(session: SMTPSession, transaction: Transaction) -> str:
    """RFC 3848 / RFC 6531 §3.7.3 `with` keyword for the Received header."""
    if not session.extended_smtp:
        return "SMTP"
    base = "UTF8SMTP" if transaction.smtp_utf8 else "ESMTP"
    return base + ("S" if session.tls else "")


def delivery_envelope(session: SMTPSession, transaction: Transaction) -> inbound.Envelope:
    """The envelope handed to the service layer for a message received by DATA."""
    return inbound.Envelope(
        **envelope_fields(session, transaction),
        transport=Transport.DATA,
        protocol=received_protocol(session, transaction),
        verification=Verification.UNVERIFIED,
        auth_result="none",
    )
