"""The SMTP protocol of the inbound MX (RFC 5321) with SOURCE and GET (reverse-delivery.md), on aiosmtpd.

`InboundSMTP` keeps aiosmtpd's transport, STARTTLS and session machinery and replaces its
command loop and verbs: every reply carries an enhanced status code (RFC 2034), DATA is read in
chunks, and the limits of a public MX are enforced. Policy lives in the handler (handler.py).
The submission listener subclasses it (`offers_auth`, `offers_source`, `unverified_policy_applies`,
`delivery_envelope`, and its own handler's `recipient_verdict`).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import logging
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP, Envelope, TLSSetupException
from django.conf import settings

from mailcore.models import Transport, Verification
from mailcore.services import inbound
from mailcore.services.verification import is_source_id
from mailcore.smtp import replies
from mailcore.smtp.data import DataReceiver, DotStuffer
from mailcore.smtp.hooks import hook_names
from mailcore.smtp.replies import Reply

if TYPE_CHECKING:
    from mailcore.smtp.handler import InboundHandler
    from mailcore.smtp.listener import ConnectionRegistry

log = logging.getLogger("mailcore.smtp")

# RFC 5321 §4.5.3.1.4: 512 octets per command line, CRLF included. Extensions may add to it:
# RFC 1870 §3 (SIZE) 26, RFC 6531 §3.4 (SMTPUTF8) 10, RFC 6152 (BODY=8BITMIME) 14.
COMMAND_LINE_LIMIT = 512
MAIL_LINE_LIMIT = COMMAND_LINE_LIMIT + 26 + 10 + 14
DATA_CHUNK = 256 * 1024
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


class Transaction(Envelope):
    """aiosmtpd's envelope, plus what our policy needs. `mail_from` is None before MAIL, "" for <>."""

    def __init__(self) -> None:
        super().__init__()
        self.body_type = "7BIT"
        # Whether the recipients so far are in domains that refuse unverified mail (§5): a
        # transaction holds only one kind, so that DATA can be refused for all or none.
        self.rejects_unverified: bool | None = None


def parse_path(text: str) -> tuple[str, str] | None:
    """(address, parameters) of `<address> params`; None when it is not a path."""
    match = _PATH.match(text) or _BARE_PATH.match(text)
    if match is None:
        return None
    return match.group("path"), match.group("params").strip()


# asyncio's default high-water mark for a transport's write buffer (64 KiB).
WRITE_BUFFER_HIGH = 64 * 1024


class InboundSMTP(SMTP):
    """One SMTP session of the inbound MX."""

    offers_auth = False  # AUTH belongs to the submission port, never to the MX (issue 3)
    offers_source = True  # SOURCE and GET of reverse-delivery.md
    # The StreamReader's buffer; the protocol's own line limits are checked by the command loop.
    line_length_limit = 32 * 1024
    # aiosmtpd's __init__ finds verbs and AUTH mechanisms with dir() and inspect.getmembers(),
    # which read every attribute of a new session: a third of a millisecond per connection
    # (issue 8). Those are the only names it looks for, and they belong to the class.
    __dir__ = hook_names("smtp_", "auth_")

    def __init__(self, handler: InboundHandler, config: SMTPConfig, registry: ConnectionRegistry, **kwargs):
        super().__init__(
            handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.hostname,
            ident="ESMTP",
            tls_context=config.tls_context,
            timeout=config.command_timeout,
            **kwargs,
        )
        self.config = config
        self.registry = registry
        self.client_address = ""
        self.bad_commands = 0
        self.awaiting_command = False
        self.asked_for_ids = False  # a GET was made in this session (the handler's guessing check)
        if not self.offers_auth:
            self._smtp_methods.pop("AUTH", None)
        if not self.offers_source:
            self._smtp_methods.pop("SOURCE", None)
            self._smtp_methods.pop("GET", None)

    # --- aiosmtpd plumbing ---------------------------------------------------------------------
    # aiosmtpd re-creates a timer for every command and awaits drain() after every reply; the
    # overrides below keep one timer per session and drain only when the client reads slowly:
    # per message, with a new connection each, these were a tenth of the listener's CPU (issue 8).

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Close the session after `duration` (the command timeout) without another command."""
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled():
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)
        elif handle.when() > self._deadline:  # a shorter limit than the one armed: re-arm
            handle.cancel()
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)

    def _timeout_check(self) -> None:
        # The timer was armed for an older deadline; activity since then moved it on.
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)
        else:
            self._timeout_cb()

    async def push(self, status: str | bytes) -> None:
        response = status.encode() if isinstance(status, str) else status
        self._writer.write(response + b"\r\n")
        transport = self.transport
        # Wait only when the transport holds more than its high-water mark (or is closing, so
        # that a vanished client is noticed here); otherwise the reply is on its way already.
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            await self._writer.drain()

    def _create_envelope(self) -> Transaction:
        return Transaction()

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = self.session.peer
        if isinstance(peer, tuple) and peer:
            self.client_address = str(peer[0])

    def connection_lost(self, error: Exception | None) -> None:
        if self.in_transaction and self.session is not None:
            self.log_transaction("NOQUEUE", "lost connection before the end of the transaction")
        self.registry.release(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        # aiosmtpd cancels the session at EOF; a pipelining client that half-closes after QUIT
        # must still get its replies, so let the reader run dry instead.
        return asyncio.StreamReaderProtocol.eof_received(self)

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.5.3.2: the server may close after the timeout; say why first.
        if self.transport is not None and not self.transport.is_closing():
            log.info("%s: timeout", self.client_address)
            self.transport.write(f"{replies.TIMEOUT}\r\n".encode())
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def shutdown_if_idle(self) -> bool:
        """Listener shutdown: close a session now if it waits for a command outside a transaction."""
        if self.awaiting_command and not self.in_transaction and self.transport is not None:
            self.transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
            self.close()
            return True
        return False

    async def reply(self, reply: Reply | str) -> None:
        """Send one reply; 5xx replies count toward the session's error cap."""
        if isinstance(reply, Reply) and reply.code >= 500:
            self.bad_commands += 1
        await self.push(str(reply))

    async def handle_exception(self, error: Exception) -> str:
        # Never aiosmtpd's "500 Error: (Type) text": our fault, temporary, and no internals shown.
        log.exception("%s: unexpected error in the session", self.client_address)
        return str(replies.TEMPORARY_FAILURE)

    # --- the command loop (RFC 5321 §4.1) ------------------------------------------------------

    async def _handle_client(self) -> None:
        refusal = self.registry.admit(self)
        if refusal is not None:
            await self.push(str(refusal))
            self.close()
            return
        await self.push(f"220 {self.hostname} ESMTP")
        while self.transport is not None and not self.transport.is_closing():
            if self.registry.stopping and not self.in_transaction:
                await self.push(str(replies.SHUTTING_DOWN))
                self.close()
                return
            try:
                self.awaiting_command = True
                try:
                    line = await self._read_command_line()
                finally:
                    self.awaiting_command = False
                if line is None:
                    self.close()
                    return
                await self._dispatch(line)
                if self.bad_commands >= self.config.max_bad_commands and self.transport is not None:
                    await self.push(str(replies.TOO_MANY_ERRORS))
                    self.close()
                    return
            except asyncio.CancelledError:
                self._writer.close()
                raise
            except (ConnectionError, TLSSetupException):
                self.close()
                return
            except Exception as error:
                await self.push(await self.handle_exception(error))

    async def _read_command_line(self) -> bytes | Reply | None:
        """One command line with its line end; a Reply for a line too long; None at EOF."""
        try:
            return await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError as error:
            # Far over any limit: drop it up to its end, then refuse it (RFC 5321 §4.5.3.1.4).
            await self._reader.read(error.consumed)
            while True:
                try:
                    await self._reader.readuntil(b"\n")
                    return replies.LINE_TOO_LONG
                except asyncio.LimitOverrunError as more:
                    await self._reader.read(more.consumed)
                except asyncio.IncompleteReadError:
                    return None

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
        method = self._smtp_methods.get(verb) if verb.isalpha() else None
        if method is None:
            log.info("%s: unrecognized command %r", self.client_address, verb[:20])
            await self.reply(replies.COMMAND_UNRECOGNIZED)
            return
        arg = arg_bytes.strip().decode("utf-8", errors="surrogateescape") or None
        self._reset_timeout()
        await method(arg)

    @staticmethod
    def looks_like_http(verb: str, arg: bytes) -> bool:
        if verb in HTTP_METHODS or verb.endswith(":"):
            return True
        if verb == "GET" and len(arg.split()) > 1:  # reverse-delivery.md §6: GET / HTTP/1.1
            return True
        return bool(_HTTP_VERSION.search(arg))

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
        if self.tls_context and not self._tls_protocol:
            keywords.append("STARTTLS")  # RFC 3207
        if self.offers_source:
            keywords.append("SOURCE")  # reverse-delivery.md §2
        return keywords

    async def smtp_EHLO(self, arg: str | None) -> None:
        if not arg:
            await self.reply(replies.BAD_SYNTAX(usage="EHLO hostname"))
            return
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = arg.split()[0]
        lines = [self.hostname, *self.ehlo_keywords()]
        for text in lines[:-1]:
            self._writer.write(f"250-{text}\r\n".encode())
        await self.push(f"250 {lines[-1]}")

    async def smtp_HELO(self, arg: str | None) -> None:
        if not arg:
            await self.reply(replies.BAD_SYNTAX(usage="HELO hostname"))
            return
        self._set_rset_state()
        self.session.extended_smtp = False
        self.session.host_name = arg.split()[0]
        await self.push(f"250 {self.hostname}")

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.reply(replies.OK)

    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self.reply(replies.BAD_SYNTAX(usage="RSET"))
            return
        self._set_rset_state()
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
        if self._tls_protocol:
            await self.reply(replies.TLS_ALREADY_ACTIVE)
            return
        await self.reply(replies.READY_FOR_TLS)
        # As aiosmtpd's own STARTTLS: put an SSL protocol between the transport and us; the
        # session starts over once the handshake is done (RFC 3207 §4.2).
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(self.loop, self, self.tls_context, waiter, server_side=True)
        self._original_transport = self.transport
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.info("%s: TLS handshake failed: %s", self.client_address, error)
            raise TLSSetupException() from error

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
            self._set_post_data_state()
            await self.reply(refusal)
            return
        await self.push(str(replies.START_MAIL_INPUT))
        receiver = DataReceiver(self.config.max_message_size)
        while not receiver.done:
            self._reset_timeout(self.config.data_timeout)  # RFC 5321 §4.5.3.2.5: per data block
            chunk = await self._reader.read(DATA_CHUNK)
            if not chunk:
                # Unterminated DATA: nothing is stored (RFC 5321 §4.1.1.4).
                self.log_transaction("NOQUEUE", "lost connection in DATA")
                self._set_post_data_state()
                self.close()
                return
            receiver.feed(chunk)
            if receiver.abandoned:
                self.log_transaction("NOQUEUE", f"{replies.DATA_TOO_BIG} (closed)", size=receiver.received)
                self._set_post_data_state()
                await self.reply(replies.DATA_TOO_BIG)
                self.close()
                return
        if receiver.leftover:
            # Commands pipelined after the final dot wait in the reader for the command loop.
            self._reader._buffer[0:0] = receiver.leftover
        outcome = receiver.outcome()
        if outcome.problem is not None:
            result, queue_id = outcome.problem, None
        else:
            result, queue_id = await self.event_handler.deliver(self, outcome.content)
        self.log_transaction(queue_id or "NOQUEUE", str(result), size=outcome.received)
        self._set_post_data_state()
        await self.reply(result)

    def received_protocol(self) -> str:
        """RFC 3848 / RFC 6531 §3.7.3 `with` keyword for the Received header."""
        if not self.session.extended_smtp:
            return "SMTP"
        base = "UTF8SMTP" if self.envelope.smtp_utf8 else "ESMTP"
        return base + ("S" if self._tls_protocol else "")

    def delivery_envelope(self) -> inbound.Envelope:
        """The envelope handed to the service layer for a message received by DATA."""
        return inbound.Envelope(
            mail_from=self.envelope.mail_from or "",
            rcpt_tos=list(self.envelope.rcpt_tos),
            client_address=self.client_address,
            helo_name=self.session.host_name or "",
            tls=bool(self._tls_protocol),
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
            "yes" if self._tls_protocol else "no",
            result,
        )

    # --- SOURCE: reverse-delivery.md §3 (receiving role) ---------------------------------------

    async def smtp_SOURCE(self, arg: str | None) -> None:
        reply = await self._source(arg)
        if self.in_transaction:
            self.log_transaction("NOQUEUE" if reply.code != 250 else f"SOURCE {arg}", str(reply))
        # "After any reply the transaction is over, exactly as after DATA's final reply."
        self._set_post_data_state()
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
                self._writer.write(stuffer.feed(chunk))
                self._reset_timeout(self.config.data_timeout)
                await self._writer.drain()
        except OSError:
            # Half a body was sent: only closing without the final dot tells the client (§4).
            log.exception("GET %s: reading the stored body failed mid-transfer, closing", arg)
            self.close()
            return
        await self.push(stuffer.finish()[:-2])
        log.info("GET %s: client=[%s], size=%s, result=%s", arg, self.client_address, body.size, reply)
