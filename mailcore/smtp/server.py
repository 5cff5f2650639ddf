"""The SMTP protocol of the inbound MX (RFC 5321) with SOURCE and GET (reverse-delivery.md).

`InboundSMTP` is an asyncio protocol whose `smtp_VERB` coroutines follow aiosmtpd's shape: every
reply carries an enhanced status code (RFC 2034), DATA is taken in whole chunks, and the limits
of a public MX are enforced. Policy lives in the handler (handler.py).
The submission listener subclasses it (`offers_auth`, `offers_source`, `unverified_policy_applies`,
`delivery_envelope`, and its own handler's `recipient_verdict`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from mailcore.models import Transport, Verification
from mailcore.services import inbound
from mailcore.services.verification import is_source_id
from mailcore.smtp import replies
from mailcore.smtp.data import DataReceiver, DotStuffer
from mailcore.smtp.replies import Reply

if TYPE_CHECKING:
    from mailcore.smtp.handler import InboundHandler
    from mailcore.smtp.listener import ConnectionRegistry

log = logging.getLogger("mailcore.smtp")

# RFC 5321 §4.5.3.1.4: 512 octets per command line, CRLF included. Extensions may add to it:
# RFC 1870 §3 (SIZE) 26, RFC 6531 §3.4 (SMTPUTF8) 10, RFC 6152 (BODY=8BITMIME) 14.
COMMAND_LINE_LIMIT = 512
MAIL_LINE_LIMIT = COMMAND_LINE_LIMIT + 26 + 10 + 14
HTTP_METHODS = frozenset({"POST", "PUT", "HEAD", "OPTIONS", "CONNECT", "DELETE", "PATCH", "TRACE"})
_HTTP_VERSION = re.compile(rb"\sHTTP/\d", re.IGNORECASE)
# RFC 5321 §4.1.2 Path, leniently: an optional source route (§4.1.1.3 says to ignore it), and a
# local part that may be quoted.
_PATH = re.compile(r'\s*<(?:@[^:<>]*:)?(?P<path>(?:"(?:[^"\\]|\\.)*"|[^<>"\s])*)>(?P<params>.*)\Z')
_BARE_PATH = re.compile(r"\s*(?P<path>[^<>\s]+)(?P<params>.*)\Z")
_MAILBOX = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^@\s"]+)@[^@\s<>"]+\Z')


@dataclass
class SMTPConfig:
    """What a listener is told by the operator (operations.md settings)."""

    hostname: str
    max_message_size: int
    max_recipients: int = 100
    command_timeout: float = 300.0
    data_timeout: float = 180.0
    max_bad_commands: int = 20
    tls_context: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls) -> SMTPConfig:
        return cls(
            hostname=settings.MAIL_HOSTNAME,
            max_message_size=settings.MAIL_MAX_MESSAGE_SIZE,
            max_recipients=settings.MAIL_SMTP_MAX_RECIPIENTS,
            command_timeout=settings.MAIL_SMTP_COMMAND_TIMEOUT,
            data_timeout=settings.MAIL_SMTP_DATA_TIMEOUT,
            max_bad_commands=settings.MAIL_SMTP_MAX_BAD_COMMANDS,
            tls_context=tls_context_from_settings(),
        )


def tls_context_from_settings() -> ssl.SSLContext | None:
    if not (settings.MAIL_TLS_CERT and settings.MAIL_TLS_KEY):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.MAIL_TLS_CERT, settings.MAIL_TLS_KEY)
    return context


@dataclass
class Transaction:
    """One mail transaction (RFC 5321 §3.3). `mail_from` is None before MAIL, "" for <>."""

    mail_from: str | None = None
    mail_options: list[str] = field(default_factory=list)
    rcpt_tos: list[str] = field(default_factory=list)
    smtp_utf8: bool = False
    body_type: str = "7BIT"
    # Whether the recipients so far are in domains that refuse unverified mail (§5): a
    # transaction holds only one kind, so that DATA can be refused for all or none.
    rejects_unverified: bool | None = None


def parse_path(text: str) -> tuple[str, str] | None:
    """(address, parameters) of `<address> params`; None when it is not a path."""
    match = _PATH.match(text) or _BARE_PATH.match(text)
    if match is None:
        return None
    return match.group("path"), match.group("params").strip()


# What a session holds of a client's input while a command is in progress (a slow delivery, a
# SASL exchange): past it the transport stops reading, and TCP makes the client wait.
INPUT_HELD = 256 * 1024
# The longest command line kept while looking for its end; any line past 512 octets is refused
# anyway, but only once its end has arrived (RFC 5321 §4.5.3.1.4).
LINE_HELD = 32 * 1024


@dataclass
class Session:
    """What the client said about itself: the greeting, and (submission) who logged in."""

    peer: tuple | str | None = None
    host_name: str | None = None
    extended_smtp: bool = False
    mailbox_address: str | None = None  # the submission port's authenticated user


class ClientGone(ConnectionResetError):
    """The connection closed while a command waited for the client."""


class InboundSMTP(asyncio.BufferedProtocol):
    """One SMTP session of the inbound MX.

    A protocol, not a coroutine reading streams: commands are taken from the input in
    `buffer_updated`, and each verb (`smtp_VERB`, as in aiosmtpd) is a coroutine run eagerly
    (`run_command`): most of them (EHLO, MAIL, a RCPT whose verdict is cached, QUIT) finish
    without waiting for anything, with no task, no stream and no future. One that waits (a
    delivery, a SASL answer, a lookup) goes on as a task, and what the client pipelines
    meanwhile stays in the input until it is done, so replies keep their order (RFC 2920 §3.1).
    This replaced a subclass of aiosmtpd's protocol class (a stream reader, a writer and a task
    per connection, a future per line): with the delivery left out, this one serves Postfix's
    smtp-source, one message per connection, at 800-1,200 messages a second on two cores where
    the bare aiosmtpd serves 400-600.
    """

    offers_auth = False  # AUTH belongs to the submission port, never to the MX
    offers_source = True  # SOURCE and GET of reverse-delivery.md
    _verbs: dict[str, Callable[..., Awaitable[None]]]  # by verb, per class (`verbs`)

    def __init__(self, handler: InboundHandler, config: SMTPConfig, registry: ConnectionRegistry):
        self.event_handler = handler
        self.config = config
        self.registry = registry
        self.hostname = config.hostname
        self.tls_context = config.tls_context
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_address = ""
        self.session = Session()
        self.envelope = Transaction()
        self.tls_started = False  # by STARTTLS (implicit TLS shows in the transport)
        self.bad_commands = 0
        self.asked_for_ids = False  # a GET was made in this session (the handler's guessing check)
        self.inbox = bytearray()  # what the client sent that no command has taken yet
        self.discarding = False  # inside an overlong line, dropping it up to its end
        self.receiver: DataReceiver | None = None  # between 354 and the final dot
        self.command: asyncio.Task | None = None  # the command that had to wait, if any
        self.waiter: asyncio.Future | None = None  # that command, waiting for the client
        self.writing_paused = False
        self.reading_paused = False
        self.lost = False
        self.at_eof = False
        self._deadline = 0.0
        self._timeout_handle: asyncio.TimerHandle | None = None

    @classmethod
    def verbs(cls) -> dict[str, Callable[..., Awaitable[None]]]:
        """The class's `smtp_VERB` methods by verb, found once per class."""
        found = cls.__dict__.get("_verbs")
        if found is None:
            found = {name[5:]: getattr(cls, name) for name in dir(cls) if name.startswith("smtp_")}
            if not cls.offers_auth:
                found.pop("AUTH", None)
            if not cls.offers_source:
                found.pop("SOURCE", None)
                found.pop("GET", None)
            cls._verbs = found
        return found

    # --- the connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.session.peer = peer
        if isinstance(peer, tuple) and peer:
            self.client_address = str(peer[0])
        refusal = self.registry.admit(self)
        if refusal is not None:
            self.write(f"{refusal}\r\n".encode())
            self.close()
            return
        self._reset_timeout()
        self.write(f"220 {self.hostname} ESMTP\r\n".encode())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.registry.receive_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing:
            return  # a client that talks on after QUIT, a refusal or a 421 is not listened to
        self.inbox += self.registry.receive_buffer[:nbytes]
        self._go_on()
        if len(self.inbox) > INPUT_HELD and not self.reading_paused and not self.closing:
            self.transport.pause_reading()
            self.reading_paused = True

    def _read_more(self) -> None:
        """The input held has all been taken: let the transport read again if it was paused."""
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        # A pipelining client that half-closes after QUIT must still get its replies: what it
        # sent is answered first, and the session then ends (`process`).
        self.at_eof = True
        self._go_on()
        return True

    def connection_lost(self, error: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        if self.receiver is not None:
            self._data_lost()
        elif self.in_transaction and self.command is None:
            self.log_transaction("NOQUEUE", "lost connection before the end of the transaction")
        self.registry.release(self)
        if self.waiter is not None:
            self._wake()
        # A command in progress (a delivery being committed) runs to its end; its reply goes nowhere.

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._go_on()

    def _go_on(self) -> None:
        """Something the session waited for happened: wake the command that waits, or take the next."""
        if self.waiter is not None:
            self._wake()
        elif self.command is None:
            self.process()

    @property
    def closing(self) -> bool:
        return self.lost or self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # after what was written is sent

    def shutdown_if_idle(self) -> bool:
        """Listener shutdown: close a session now if it waits for a command outside a transaction."""
        if self.command is None and self.receiver is None and not self.in_transaction and not self.closing:
            self.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
            self.close()
            return True
        return False

    # --- the command timer (RFC 5321 §4.5.3.2) ---------------------------------------------------
    # One timer per session, moved on by activity and re-armed only when it fires: a timer per
    # command was a tenth of the listener's CPU when each message came on a connection of its own.

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Close the session after `duration` (the command timeout) without another command."""
        self._deadline = self.loop.time() + (duration or self.config.command_timeout)
        handle = self._timeout_handle
        if handle is None or handle.cancelled():
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)
        elif handle.when() > self._deadline:  # a shorter limit than the one armed: re-arm
            handle.cancel()
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)

    def _timeout_check(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)
        elif not self.closing:
            # RFC 5321 §4.5.3.2: the server may close after the timeout; say why first.
            log.info("%s: timeout", self.client_address)
            self.write(f"{replies.TIMEOUT}\r\n".encode())
            self.close()

    # --- commands, in order ----------------------------------------------------------------------

    def process(self) -> None:
        """Answer the commands received, until one has to wait or the input runs out."""
        while self.command is None and not self.closing:
            if self.writing_paused:
                return  # resume_writing goes on: a client that does not read gets no more replies
            if self.receiver is not None:
                if not self._take_data():
                    return
                continue
            line = self.next_line()
            if line is None:
                if self.at_eof:
                    self.close()
                else:
                    self._read_more()
                return
            if self.registry.stopping and not self.in_transaction:
                self.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
                self.close()
                return
            self.run_command(self._guarded(self._dispatch(line)))

    def next_line(self) -> bytes | Reply | None:
        """One command line with its line end; a Reply for a line far too long; None if none is complete."""
        inbox = self.inbox
        end = inbox.find(b"\n")
        if end < 0:
            if len(inbox) > LINE_HELD:
                # Drop what is held and keep dropping to the line's end: memory stays flat.
                self.discarding = True
                inbox.clear()
            return None
        line = bytes(inbox[: end + 1])
        del inbox[: end + 1]
        if self.discarding:
            self.discarding = False
            return replies.LINE_TOO_LONG
        return line

    def run_command(self, command: Coroutine[Any, Any, None]) -> None:
        """Run `command` at once, up to its end or to the first thing it has to wait for.

        What asyncio's eager task factory does in Python 3.12: only a command that really
        waits costs a task (`_resume`), and the next command is read only after it ends.
        """
        try:
            awaited = command.send(None)
        except StopIteration:
            return
        self.command = self.loop.create_task(self._resume(command, awaited))

    async def _resume(self, command: Coroutine[Any, Any, None], awaited: Any) -> None:
        try:
            while True:
                thrown = None
                try:
                    if awaited is None:  # a bare yield (asyncio.sleep(0))
                        await asyncio.sleep(0)
                    else:
                        # As Task.__step does with what a coroutine yields: the future was
                        # marked as being awaited, and awaiting it again here must not see that.
                        awaited._asyncio_future_blocking = False
                        await awaited
                except BaseException as error:
                    thrown = error
                try:
                    if thrown is not None and not (awaited is not None and awaited.done()):
                        awaited = command.throw(thrown)  # this task was cancelled: so is the command
                    else:
                        awaited = command.send(None)  # it reads the future's outcome itself
                except StopIteration:
                    return
        finally:
            self.command = None
            if not self.lost:
                self.process()

    async def _guarded(self, command: Awaitable[None]) -> None:
        """A command, with what ends the session: an error cap, a vanished client, our own fault."""
        try:
            await command
            if self.bad_commands >= self.config.max_bad_commands and not self.closing:
                await self.push(str(replies.TOO_MANY_ERRORS))
                self.close()
        except (ConnectionError, ssl.SSLError):
            self.close()
        except Exception:
            # Never a traceback to the client: our fault, temporary, and no internals shown.
            log.exception("%s: unexpected error in the session", self.client_address)
            if not self.closing:
                self.write(f"{replies.TEMPORARY_FAILURE}\r\n".encode())

    async def _dispatch(self, line: bytes | Reply) -> None:
        if isinstance(line, Reply):
            await self.reply(line)
            return
        if not line.endswith(b"\r\n"):
            await self.reply(replies.BARE_LF)
            return
        line = line[:-2]
        verb_bytes, _, arg_bytes = line.partition(b" ")
        verb = verb_bytes.upper().decode("ascii", errors="replace")
        if self.looks_like_http(verb, arg_bytes):
            # A browser abused to talk to this port: answer once and read nothing more (§6).
            log.info("%s: HTTP request on the SMTP port, closing", self.client_address)
            await self.push(str(replies.NOT_SMTP))
            self.close()
            return
        if b"\x00" in line:
            await self.reply(replies.NUL_IN_COMMAND)
            return
        limit = MAIL_LINE_LIMIT if verb == "MAIL" and self.session.extended_smtp else COMMAND_LINE_LIMIT
        if len(line) + 2 > limit:
            await self.reply(replies.LINE_TOO_LONG)
            return
        method = self.verbs().get(verb) if verb.isalpha() else None
        if method is None:
            log.info("%s: unrecognized command %r", self.client_address, verb[:20])
            await self.reply(replies.COMMAND_UNRECOGNIZED)
            return
        arg = arg_bytes.strip().decode("utf-8", errors="surrogateescape") or None
        self._reset_timeout()
        await method(self, arg)

    @staticmethod
    def looks_like_http(verb: str, arg: bytes) -> bool:
        if verb in HTTP_METHODS or verb.endswith(":"):
            return True
        if verb == "GET" and len(arg.split()) > 1:  # reverse-delivery.md §6: GET / HTTP/1.1
            return True
        return bool(_HTTP_VERSION.search(arg))

    # --- talking to the client -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closing:
            self.transport.write(data)

    async def push(self, status: str | bytes) -> None:
        """Send one reply line; wait only while the client does not read what it was sent."""
        if self.lost:
            raise ConnectionResetError("connection lost")
        self.write((status.encode() if isinstance(status, str) else status) + b"\r\n")
        if self.writing_paused:
            await self.drain()

    async def drain(self) -> None:
        """Until the transport's buffer is below its high-water mark again."""
        while self.writing_paused and not self.lost:
            await self._wait_for_client()
        if self.lost:
            raise ConnectionResetError("connection lost")

    async def reply(self, reply: Reply | str) -> None:
        """Send one reply; 5xx replies count toward the session's error cap."""
        if isinstance(reply, Reply) and reply.code >= 500:
            self.bad_commands += 1
        await self.push(str(reply))

    async def read_line(self) -> bytes | Reply | None:
        """A line inside a command (a SASL answer), as `next_line`; None once the client has gone."""
        while (line := self.next_line()) is None:
            if self.lost or self.at_eof:
                return None
            self._read_more()
            await self._wait_for_client()
        return line

    async def _wait_for_client(self) -> None:
        """Until the client sends something, reads what it was sent, or goes."""
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # --- the transaction's state -----------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self.envelope.mail_from is not None

    def _end_transaction(self) -> None:
        """Forget the transaction: after RSET, a new greeting, STARTTLS, or the end of DATA."""
        self.envelope = Transaction()

    def tls_active(self) -> bool:
        return self.tls_started or bool(self.transport and self.transport.get_extra_info("ssl_object"))

    # --- session verbs -------------------------------------------------------------------------

    def ehlo_keywords(self) -> list[str]:
        """The EHLO keywords (RFC 5321 §4.1.1.1), each honoured by this class."""
        keywords = [
            "PIPELINING",  # RFC 2920: replies are sent in order, one command at a time
            f"SIZE {self.config.max_message_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "SMTPUTF8",  # RFC 6531
            "ENHANCEDSTATUSCODES",  # RFC 2034
        ]
        if self.tls_context and not self.tls_active():
            keywords.append("STARTTLS")  # RFC 3207
        if self.offers_source:
            keywords.append("SOURCE")  # reverse-delivery.md §2
        return keywords

    async def smtp_EHLO(self, arg: str | None) -> None:
        if not arg:
            await self.reply(replies.BAD_SYNTAX(usage="EHLO hostname"))
            return
        self._end_transaction()
        self.session.extended_smtp = True
        self.session.host_name = arg.split()[0]
        lines = [self.hostname, *self.ehlo_keywords()]
        # One write: one TCP segment and one wake-up of the client, not one per line
        # (with TCP_NODELAY each line was a send(2) and a segment of its own, 6 of 13 a message).
        await self.push("".join(f"250-{text}\r\n" for text in lines[:-1]) + f"250 {lines[-1]}")

    async def smtp_HELO(self, arg: str | None) -> None:
        if not arg:
            await self.reply(replies.BAD_SYNTAX(usage="HELO hostname"))
            return
        self._end_transaction()
        self.session.extended_smtp = False
        self.session.host_name = arg.split()[0]
        await self.push(f"250 {self.hostname}")

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.reply(replies.OK)

    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self.reply(replies.BAD_SYNTAX(usage="RSET"))
            return
        self._end_transaction()
        await self.reply(replies.OK)

    async def smtp_QUIT(self, arg: str | None) -> None:
        await self.reply(replies.BYE)
        self.close()

    async def smtp_HELP(self, arg: str | None) -> None:
        await self.reply(replies.HELP)

    async def smtp_VRFY(self, arg: str | None) -> None:
        # RFC 5321 §3.5.3: 252 is allowed and tells harvesters nothing.
        if not arg:
            await self.reply(replies.BAD_SYNTAX(usage="VRFY address"))
            return
        await self.reply(replies.VRFY_CANNOT)

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self.reply(replies.EXPN_DISABLED)

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            await self.reply(replies.BAD_SYNTAX(usage="STARTTLS"))
            return
        if not self.tls_context:
            await self.reply(replies.TLS_NOT_AVAILABLE)
            return
        if self.tls_active():
            await self.reply(replies.TLS_ALREADY_ACTIVE)
            return
        await self.reply(replies.READY_FOR_TLS)
        # RFC 3207 §4 and CVE-2011-0411: what the client pipelined after STARTTLS came in
        # plaintext and must not be read as if it came through TLS; and not one more read in
        # plaintext, as the ClientHello is for the TLS layer (start_tls resumes reading).
        self.inbox.clear()
        self.transport.pause_reading()
        try:
            self.transport = await self.loop.start_tls(self.transport, self, self.tls_context, server_side=True)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            # A failed handshake closes the connection without telling this protocol.
            log.info("%s: TLS handshake failed: %s", self.client_address, error)
            self.connection_lost(error)
            return
        # RFC 3207 §4.2: the session starts over, forgetting what was said before TLS.
        self.tls_started = True
        self.session = Session(peer=self.session.peer)
        self._end_transaction()

    def _tls_description(self) -> str:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is None:
            return ""
        cipher = ssl_object.cipher()
        return f"{ssl_object.version()} with cipher {cipher[0]}" if cipher else ssl_object.version() or "TLS"

    # --- mail transaction (RFC 5321 §3.3) ------------------------------------------------------

    async def _check_helo(self) -> bool:
        if not self.session.host_name:
            await self.reply(replies.NEED_HELO)
            return False
        return True

    def _parse_address_argument(self, keyword: str, arg: str | None) -> tuple[str, list[str]] | None:
        if not arg or not arg[: len(keyword)].upper() == keyword:
            return None
        parsed = parse_path(arg[len(keyword):])
        if parsed is None:
            return None
        address, params = parsed
        return address, params.split()

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._check_helo():
            return
        if self.in_transaction:
            await self.reply(replies.NESTED_MAIL)
            return
        parsed = self._parse_address_argument("FROM:", arg)
        if parsed is None:
            await self.reply(replies.BAD_SYNTAX(usage="MAIL FROM:<address>"))
            return
        address, params = parsed
        if params and not self.session.extended_smtp:
            await self.reply(replies.BAD_SYNTAX(usage="MAIL FROM:<address> (no parameters after HELO)"))
            return
        smtputf8 = False
        body_type = "7BIT"
        for param in params:
            name, eq, value = param.partition("=")
            name = name.upper()
            if name == "SIZE" and value.isdigit():
                # RFC 1870 §6: refuse at once what would be refused after DATA.
                if int(value) > self.config.max_message_size:
                    await self.reply(replies.MESSAGE_SIZE_EXCEEDS_LIMIT)
                    return
            elif name == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                body_type = value.upper()
            elif name == "SMTPUTF8" and not eq:
                smtputf8 = True
            elif name in ("SIZE", "BODY", "SMTPUTF8"):
                await self.reply(replies.BAD_SYNTAX(usage=f"MAIL FROM:<address> {name}=..."))
                return
            else:
                await self.reply(replies.PARAMETER_UNKNOWN(name=name[:20]))
                return
        if address and not _MAILBOX.match(address):
            await self.reply(replies.BAD_SENDER_SYNTAX)
            return
        if not address.isascii() and not smtputf8:
            await self.reply(replies.NON_ASCII_ADDRESS)
            return
        verdict = await self.sender_verdict(address)
        if verdict.code != 250:
            await self.reply(verdict)
            return
        self.envelope.mail_from = address
        self.envelope.mail_options = params
        self.envelope.smtp_utf8 = smtputf8
        self.envelope.body_type = body_type
        await self.reply(verdict)

    async def sender_verdict(self, address: str) -> Reply:
        """Whether this sender may start a transaction; the MX takes any (a subclass may not)."""
        return replies.SENDER_OK

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._check_helo():
            return
        if not self.in_transaction:
            await self.reply(replies.NEED_MAIL)
            return
        parsed = self._parse_address_argument("TO:", arg)
        if parsed is None:
            await self.reply(replies.BAD_SYNTAX(usage="RCPT TO:<address>"))
            return
        address, params = parsed
        if params:
            await self.reply(replies.PARAMETER_UNKNOWN(name=params[0].partition("=")[0].upper()[:20]))
            return
        if not _MAILBOX.match(address):
            await self.reply(replies.BAD_RECIPIENT_SYNTAX)
            return
        if not address.isascii() and not self.envelope.smtp_utf8:
            await self.reply(replies.NON_ASCII_ADDRESS)
            return
        if len(self.envelope.rcpt_tos) >= self.config.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452, and the client sends the rest in another transaction.
            await self.reply(replies.TOO_MANY_RECIPIENTS)
            return
        verdict, policy = await self.event_handler.recipient_verdict(self, address)
        if verdict.code == 250:
            rejects = self.unverified_policy_applies() and self.event_handler.rejects_unverified(policy)
            if self.envelope.rcpt_tos and rejects != self.envelope.rejects_unverified:
                verdict = replies.POLICY_MIXES
            else:
                self.envelope.rejects_unverified = rejects
                if address not in self.envelope.rcpt_tos:
                    self.envelope.rcpt_tos.append(address)
        await self.reply(verdict)

    def unverified_policy_applies(self) -> bool:
        """Mail through this listener is unverified unless it is announced with SOURCE."""
        return True

    async def smtp_DATA(self, arg: str | None) -> None:
        if not await self._check_helo():
            return
        if not self.in_transaction:
            await self.reply(replies.NEED_MAIL)
            return
        if not self.envelope.rcpt_tos:
            await self.reply(replies.NEED_RCPT)
            return
        if arg:
            await self.reply(replies.BAD_SYNTAX(usage="DATA"))
            return
        if self.envelope.rejects_unverified:
            # reverse-delivery.md §5: these domains take only verified mail; refuse before the body.
            refusal = replies.ONLY_VERIFIED(domain=self.envelope.rcpt_tos[0].rpartition("@")[2].lower())
            self.log_transaction("NOQUEUE", str(refusal))
            self._end_transaction()
            await self.reply(refusal)
            return
        await self.push(str(replies.START_MAIL_INPUT))
        self.receiver = DataReceiver(self.config.max_message_size)
        self._reset_timeout(self.config.data_timeout)

    def _take_data(self) -> bool:
        """Feed the input to the message being received (`process`); False until more arrives."""
        receiver = self.receiver
        if not self.inbox:
            if self.at_eof:
                self._data_lost()
            else:
                self._read_more()
            return False
        self._reset_timeout(self.config.data_timeout)  # RFC 5321 §4.5.3.2.5: per data block
        receiver.feed(self.inbox)
        self.inbox.clear()
        if receiver.abandoned:
            self.receiver = None
            self.log_transaction("NOQUEUE", f"{replies.DATA_TOO_BIG} (closed)", size=receiver.received)
            self._end_transaction()
            self.write(f"{replies.DATA_TOO_BIG}\r\n".encode())
            self.close()
            return False
        if receiver.done:
            self.receiver = None
            # Commands pipelined after the final dot wait for the message's reply.
            self.inbox += receiver.leftover
            self.run_command(self._guarded(self._message_received(receiver)))
        return True

    def _data_lost(self) -> None:
        """The client went before the final dot: nothing is stored (RFC 5321 §4.1.1.4)."""
        self.receiver = None
        self.log_transaction("NOQUEUE", "lost connection in DATA")
        self._end_transaction()
        self.close()

    async def _message_received(self, receiver: DataReceiver) -> None:
        outcome = receiver.outcome()
        if outcome.problem is not None:
            result, queue_id = outcome.problem, None
        else:
            result, queue_id = await self.event_handler.deliver(self, outcome.content)
        self.log_transaction(queue_id or "NOQUEUE", str(result), size=outcome.received)
        self._end_transaction()
        await self.reply(result)

    def received_protocol(self) -> str:
        """RFC 3848 / RFC 6531 §3.7.3 `with` keyword for the Received header."""
        if not self.session.extended_smtp:
            return "SMTP"
        base = "UTF8SMTP" if self.envelope.smtp_utf8 else "ESMTP"
        return base + ("S" if self.tls_active() else "")

    def delivery_envelope(self) -> inbound.Envelope:
        """The envelope handed to the service layer for a message received by DATA."""
        return inbound.Envelope(
            mail_from=self.envelope.mail_from or "",
            rcpt_tos=list(self.envelope.rcpt_tos),
            client_address=self.client_address,
            helo_name=self.session.host_name or "",
            tls=self.tls_active(),
            tls_cipher=self._tls_description(),
            transport=Transport.DATA,
            protocol=self.received_protocol(),
            verification=Verification.UNVERIFIED,
            auth_result="none",
        )

    def log_transaction(self, queue_id: str, result: str, size: int | None = None) -> None:
        """One line per transaction, as Postfix writes it."""
        envelope = self.envelope
        log.info(
            "%s: client=[%s], helo=%s, from=<%s>, to=%s, size=%s, tls=%s, result=%s",
            queue_id,
            self.client_address,
            self.session.host_name if self.session else "",
            envelope.mail_from or "",
            ",".join(f"<{r}>" for r in envelope.rcpt_tos) or "none",
            size if size is not None else "-",
            "yes" if self.tls_active() else "no",
            result,
        )

    # --- SOURCE: reverse-delivery.md §3 (receiving role) ---------------------------------------

    async def smtp_SOURCE(self, arg: str | None) -> None:
        reply = await self._source(arg)
        if self.in_transaction:
            self.log_transaction("NOQUEUE" if reply.code != 250 else f"SOURCE {arg}", str(reply))
        # "After any reply the transaction is over, exactly as after DATA's final reply."
        self._end_transaction()
        await self.reply(reply)

    async def _source(self, arg: str | None) -> Reply:
        if not self.session.host_name or not self.session.extended_smtp:
            return replies.SOURCE_NEED_EHLO
        if not self.in_transaction:
            return replies.SOURCE_NEED_MAIL
        if not self.envelope.rcpt_tos:
            return replies.SOURCE_NEED_RCPT
        if not arg or not is_source_id(arg):
            return replies.SOURCE_BAD_ID
        if self.envelope.mail_from == "":
            return replies.SOURCE_NULL_SENDER
        return await self.event_handler.announce(self, arg)

    # --- GET: reverse-delivery.md §4 (origin role) ---------------------------------------------

    async def smtp_GET(self, arg: str | None) -> None:
        if not self.session.host_name or not self.session.extended_smtp:
            await self.reply(replies.GET_NEED_EHLO)
            return
        if self.in_transaction:
            await self.reply(replies.GET_IN_TRANSACTION)
            return
        if not arg or not is_source_id(arg):
            await self.reply(replies.GET_BAD_ID)
            return
        reply, body = await self.event_handler.fetch(self, arg)
        if reply is replies.GET_TOO_MANY_UNKNOWN:
            # spec §6 "Guessing ids": too many unknown ids from this address this minute.
            log.warning("%s: too many unknown GET ids, closing", self.client_address)
            await self.push(str(reply))
            self.close()
            return
        if body is None:
            log.info("GET %s: client=[%s], result=%s", arg, self.client_address, reply)
            await self.reply(reply)
            return
        try:
            stream = await self.event_handler.open_body(body.body_ref)
        except Exception:
            log.exception("GET %s: the stored body cannot be read", arg)
            await self.reply(replies.TEMPORARY_FAILURE)
            return
        await self.push(str(reply))
        stuffer = DotStuffer()
        try:
            async for chunk in self.event_handler.body_chunks(stream):
                self.write(stuffer.feed(chunk))
                self._reset_timeout(self.config.data_timeout)
                await self.drain()
        except OSError:
            # Half a body was sent: only closing without the final dot tells the client (§4).
            log.exception("GET %s: reading the stored body failed mid-transfer, closing", arg)
            self.close()
            return
        await self.push(stuffer.finish()[:-2])
        log.info("GET %s: client=[%s], size=%s, result=%s", arg, self.client_address, body.size, reply)
