"""The SMTP session of the inbound MX (RFC 5321) with SOURCE and GET (reverse-delivery.md), on aiosmtpd.

`InboundSMTP` is a subclass of aiosmtpd's `SMTP`: aiosmtpd reads the commands, dispatches them to
`smtp_VERB` methods, and runs STARTTLS, AUTH and the session's state. Policy is in the handler
(handler.py), asked through aiosmtpd's hooks (`handle_EHLO`, `handle_MAIL`, `handle_RCPT`,
`handle_DATA`, `handle_SOURCE`), which read what they need off the session and envelope
objects this class makes and fills in (session.py, `describe_session`). What is overridden, and
why, is said in each override's docstring; in short: every reply carries an enhanced status
code (RFC 2034), paths are parsed as RFC 5321 writes them, DATA is read in chunks, and the
limits of a public MX are enforced.
The submission listener subclasses it (submission.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiosmtpd.smtp import MISSING, SMTP, TLSSetupException
from django.conf import settings

from mailcore import tls
from mailcore.reverse_delivery.ids import EHLO_KEYWORD, is_valid_id
from mailcore.services import inbound
from mailcore.smtp.session import SMTPSession, Transaction, hook_names, unsafe
from mailcore.store import spool
from mailcore.wire import replies
from mailcore.wire.data import DataReceiver
from mailcore.wire.replies import Reply
from mailcore.wire.transparency import BodyEncoder

if TYPE_CHECKING:
    from mailcore.smtp.handler import InboundHandler
    from mailcore.smtp.listener import ConnectionRegistry

log = logging.getLogger("mailcore.smtp")
# aiosmtpd logs every command line at INFO; our own log has one line per transaction.
logging.getLogger("mail.log").setLevel(logging.WARNING)

# RFC 5321 §4.5.3.1.4: 512 octets per command line, CRLF included. Extensions may add to it:
# RFC 1870 §3 (SIZE) 26, RFC 6531 §3.4 (SMTPUTF8) 10, RFC 6152 (BODY=8BITMIME) 14.
COMMAND_LINE_LIMIT = 512
MAIL_LINE_LIMIT = COMMAND_LINE_LIMIT + 26 + 10 + 14
# What the reader holds: twice this before it stops reading from the socket (asyncio's
# StreamReader), so also what DATA takes at a time.
READ_LIMIT = 128 * 1024
DATA_CHUNK = 2 * READ_LIMIT
# asyncio's default high-water mark for a transport's write buffer (64 KiB).
WRITE_BUFFER_HIGH = 64 * 1024
HTTP_METHODS = frozenset({"POST", "PUT", "HEAD", "OPTIONS", "CONNECT", "DELETE", "PATCH", "TRACE"})
_HTTP_VERSION = re.compile(rb"\sHTTP/\d", re.IGNORECASE)
# RFC 5321 §4.1.2 Path, leniently: an optional source route (§4.1.1.3 says to ignore it), and a
# local part that may be quoted.
_PATH = re.compile(r'\s*<(?:@[^:<>]*:)?(?P<path>(?:"(?:[^"\\]|\\.)*"|[^<>"\s])*)>(?P<params>.*)\Z')
_BARE_PATH = re.compile(r"\s*(?P<path>[^<>\s]+)(?P<params>.*)\Z")
_MAILBOX = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^@\s"]+)@[^@\s<>"]+\Z')

# aiosmtpd's own replies, which carry no enhanced status code (RFC 2034 §3 wants one on every
# reply but the greeting, EHLO/HELO and 354), by how they begin: ours in their place.
STOCK_REPLIES: list[tuple[str, Reply]] = [
    ("500 Command line too long", replies.LINE_TOO_LONG),
    ("500 Error: bad syntax", replies.COMMAND_UNRECOGNIZED),
    ("500 Error: command", replies.COMMAND_UNRECOGNIZED),
    ("503 Error: send HELO first", replies.NEED_HELO),
    ("503 Error: send EHLO first", replies.NEED_HELO),
    ("501 Syntax: HELO", replies.BAD_SYNTAX(usage="HELO hostname")),
    ("501 Syntax: EHLO", replies.BAD_SYNTAX(usage="EHLO hostname")),
    ("501 Syntax: QUIT", replies.BAD_SYNTAX(usage="QUIT")),
    ("501 Syntax: RSET", replies.BAD_SYNTAX(usage="RSET")),
    ("501 Syntax: STARTTLS", replies.BAD_SYNTAX(usage="STARTTLS")),
    ("501 Syntax: VRFY", replies.BAD_SYNTAX(usage="VRFY address")),
    ("250 OK", replies.OK),
    ("221 Bye", replies.BYE),
    ("220 Ready to start TLS", replies.READY_FOR_TLS),
    ("454 TLS not available", replies.TLS_NOT_AVAILABLE),
    ("252 Cannot VRFY", replies.VRFY_CANNOT),
    ("502 Could not VRFY", replies.VRFY_CANNOT),
    ("502 EXPN not implemented", replies.EXPN_DISABLED),
    ("250 Supported commands", replies.HELP),
    ("501 Supported commands", replies.HELP),
    ("250 Syntax:", replies.HELP),
    ("503 Already authenticated", Reply(503, "5.5.1", "Already authenticated")),
    ("501 Not enough value", replies.BAD_SYNTAX(usage="AUTH mechanism [initial-response]")),
    ("501 Too many values", replies.BAD_SYNTAX(usage="AUTH mechanism [initial-response]")),
    ("501 5.7.0 Auth aborted", Reply(501, "5.0.0", "Authentication cancelled")),  # RFC 4954 §4: 5.0.0
]
_AUTH_ABORTED = "501 5.7.0 Auth aborted"


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
            tls_context=tls.server_context(),
        )


def parse_path(text: str) -> tuple[str, str] | None:
    """(address, parameters) of `<address> params`; None when it is not a path."""
    match = _PATH.match(text) or _BARE_PATH.match(text)
    if match is None:
        return None
    return match.group("path"), match.group("params").strip()


class RefusedLine(Exception):
    """A command line refused before aiosmtpd parses it; `closes`: the session ends after the reply."""

    def __init__(self, reply: Reply, closes: bool = False):
        super().__init__(str(reply))
        self.reply = reply
        self.closes = closes


class CommandReader(asyncio.StreamReader):
    """aiosmtpd's reader, with the checks every command line gets before aiosmtpd parses it.

    aiosmtpd reads a command with `readuntil()` and strips its line end, so that a bare LF ends
    a command, a NUL reaches the parser, and an HTTP request gets a reply per header line. Here
    those lines are refused, as a RefusedLine that aiosmtpd's command loop hands to
    `handle_exception`. The session is held by a weak reference (it holds the reader).
    """

    def __init__(self, session: InboundSMTP, limit: int, loop: asyncio.AbstractEventLoop):
        super().__init__(limit=limit, loop=loop)
        self._session = weakref.ref(session)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        session = self._session()
        if session is None or session.closing:
            raise asyncio.CancelledError  # after QUIT, a refusal or a 421: nothing more is read
        session.awaiting_command = True
        try:
            line = await super().readuntil(separator)
        except asyncio.IncompleteReadError:
            # The client closed (or half-closed after pipelining QUIT): what it sent is answered.
            session.close()
            raise asyncio.CancelledError from None
        finally:
            session.awaiting_command = False
        session.check_command_line(line)
        return line


class FixedLimits(collections.defaultdict):
    """Per-verb line limits that aiosmtpd's EHLO cannot grow.

    aiosmtpd keeps `command_size_limits` in one dict shared by every session of the class, which
    each EHLO adds to (MAIL += 26 for SIZE, += 10 for SMTPUTF8) and each new session clears:
    the limits of one session would move with the others'. These stay as RFC 5321 sets them.
    """

    def __setitem__(self, key, value) -> None:
        pass

    def clear(self) -> None:
        pass


class InboundSMTP(SMTP):
    """One SMTP session of the inbound MX."""

    offers_auth = False  # AUTH belongs to the submission port, never to the MX
    offers_source = True  # SOURCE and GET of reverse-delivery.md
    # Mail through this listener is unverified unless it is announced with SOURCE.
    unverified_policy_applies = True
    # aiosmtpd measures a line without its CRLF; RFC 5321 counts it.
    command_size_limit = COMMAND_LINE_LIMIT - 2
    command_size_limits = FixedLimits(lambda: COMMAND_LINE_LIMIT - 2, {"MAIL": MAIL_LINE_LIMIT - 2})
    line_length_limit = READ_LIMIT

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
        self.in_data = False
        self.refused = False
        self._corked = b""  # the lines of a multi-line reply so far
        if not self.offers_auth:
            self._smtp_methods.pop("AUTH", None)
        if not self.offers_source:
            self._smtp_methods.pop("SOURCE", None)
            self._smtp_methods.pop("GET", None)
        # The reader that checks command lines (CommandReader) in place of the plain one that
        # aiosmtpd gave StreamReaderProtocol.__init__, before any connection has used it.
        reader = CommandReader(self, READ_LIMIT, self.loop)
        self._stream_reader_wr = weakref.ref(reader)
        self._strong_reader = reader

    def __dir__(self) -> list[str]:
        """Only the names aiosmtpd looks for in a new session (its verbs and AUTH mechanisms).

        aiosmtpd's __init__ finds them with dir() and inspect.getmembers(), which read every
        attribute of the session: a third of a millisecond per connection.
        """
        return hook_names(type(self), ("smtp_", "auth_"))

    # --- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """aiosmtpd's, after the connection caps (listener.ConnectionRegistry) have admitted it;
        then what the policy reads of the new session (after STARTTLS too: a new one)."""
        if self._original_transport is None:  # a new connection, not the end of a STARTTLS
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and peer:
                self.client_address = str(peer[0])
            refusal = self.registry.admit(self)
            if refusal is not None:
                self.refused = True
                transport.write(f"{refusal}\r\n".encode())
                transport.close()
                return
        previous = self.session
        super().connection_made(transport)
        self.describe_session(self.session)
        if previous is not None:
            self.session.asked_for_ids = previous.asked_for_ids

    def _create_session(self) -> SMTPSession:
        return SMTPSession(self.loop)

    def describe_session(self, session: SMTPSession) -> None:
        """Fill in what the handler reads of `session`: this connection's, as made now (TLS or not)."""
        session.client_address = self.client_address
        session.server_name = self.hostname
        session.tls = self.tls_active()
        session.tls_cipher = self._tls_description()
        session.unverified_policy_applies = self.unverified_policy_applies
        session.open_sessions = self.registry.counts.total
        session.ehlo_keywords = self.ehlo_keywords()

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        if self.in_transaction and not self.in_data and self.session is not None:
            self.log_transaction("NOQUEUE", "lost connection before the end of the transaction")
        self.registry.release(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """Replaces aiosmtpd's, which cancels the session at EOF: a pipelining client that
        half-closes after QUIT must still get its replies, so the reader runs dry instead."""
        if self.refused:
            return False
        keep_open = asyncio.StreamReaderProtocol.eof_received(self)
        return False if self._tls_protocol is not None else keep_open

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # after what was written is sent

    def shutdown_if_idle(self) -> bool:
        """Listener shutdown: close a session now if it waits for a command outside a transaction."""
        if self.awaiting_command and not self.in_transaction and not self.closing:
            self.transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
            self.close()
            return True
        return False

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Replaces aiosmtpd's, which cancels and makes a timer for every command: one timer per
        session whose deadline moves, re-armed only when it fires (a tenth of the CPU per message
        with a connection per message)."""
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled():
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)
        elif handle.when() > self._deadline:  # a shorter limit than the one armed: re-arm
            handle.cancel()
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)

    def _timeout_check(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_check)
        else:
            self._timeout_cb()

    def _timeout_cb(self) -> None:
        """aiosmtpd's closes without a word; RFC 5321 §4.5.3.2 lets us close, saying why first."""
        if not self.closing:
            log.info("%s: timeout", self.client_address)
            self.transport.write(f"{replies.TIMEOUT}\r\n".encode())
            self.close()

    # --- command lines -------------------------------------------------------------------------

    def check_command_line(self, line: bytes) -> None:
        """Raise RefusedLine for a line aiosmtpd must not parse (CommandReader)."""
        if self.registry.stopping and not self.in_transaction:
            raise RefusedLine(replies.SHUTTING_DOWN, closes=True)
        verb, _, arg = line.rstrip(b"\r\n").partition(b" ")
        if self.looks_like_http(verb.upper().decode("ascii", "replace"), arg):
            # A browser abused to talk to this port: answer once and read nothing more (§6).
            log.info("%s: HTTP request on the SMTP port, closing", self.client_address)
            raise RefusedLine(replies.NOT_SMTP, closes=True)
        if not line.endswith(b"\r\n") and line.endswith(b"\n"):
            raise RefusedLine(replies.BARE_LF)
        if b"\x00" in line:
            raise RefusedLine(replies.NUL_IN_COMMAND)

    @staticmethod
    def looks_like_http(verb: str, arg: bytes) -> bool:
        if verb in HTTP_METHODS or verb.endswith(":"):
            return True
        if verb == "GET" and len(arg.split()) > 1:  # reverse-delivery.md §6: GET / HTTP/1.1
            return True
        return bool(_HTTP_VERSION.search(arg))

    async def handle_exception(self, error: Exception) -> str:
        """Replaces aiosmtpd's "500 Error: (Type) text": a refused line gets its reply, and our
        own fault a temporary one, with no internals shown."""
        if isinstance(error, RefusedLine):
            if error.closes:
                self.close_after_reply()
            return str(error.reply)
        if isinstance(error, TLSSetupException):
            log.info("%s: TLS handshake failed: %s", self.client_address, error.__cause__)
            return ""
        log.exception("%s: unexpected error in the session", self.client_address)
        return str(replies.TEMPORARY_FAILURE)

    def close_after_reply(self) -> None:
        """The session ends once the next reply is written (push)."""
        self.session.closes_after_reply = True

    # --- replies -------------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        """aiosmtpd's, with four differences:

        - aiosmtpd's own replies get an enhanced status code (STOCK_REPLIES, RFC 2034 §3);
        - the lines of a multi-line reply go in one write (one TCP segment, not one per line);
        - 5xx replies count toward the session's error cap, which ends it with 421;
        - it waits for the client only while the transport holds more than its high-water mark,
          where aiosmtpd drains after every reply.
        """
        if self.closing:
            return
        if isinstance(status, str):
            status = _with_status_code(status).encode("utf-8", "surrogateescape")
        if status[3:4] == b"-":
            self._corked += status + b"\r\n"
            return
        data, self._corked = self._corked + status + b"\r\n", b""
        self.transport.write(data)
        if status[:1] == b"5":
            self.bad_commands += 1
            if self.bad_commands >= self.config.max_bad_commands:
                self.transport.write(f"{replies.TOO_MANY_ERRORS}\r\n".encode())
                self.close()
        if self.session.closes_after_reply:
            self.close()
        if self.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            await self._writer.drain()

    async def reply(self, reply: Reply | str) -> None:
        await self.push(str(reply))

    # --- the transaction's state ---------------------------------------------------------------

    def _create_envelope(self) -> Transaction:
        return Transaction()

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def _end_transaction(self) -> None:
        """Forget the transaction: after RSET, a new greeting, STARTTLS, or the end of DATA."""
        self._set_post_data_state()

    def tls_active(self) -> bool:
        return self._tls_protocol is not None or bool(self.transport and self.transport.get_extra_info("ssl_object"))

    def _tls_description(self) -> str:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is None:
            return ""
        cipher = ssl_object.cipher()
        return f"{ssl_object.version()} with cipher {cipher[0]}" if cipher else ssl_object.version() or "TLS"

    # --- session verbs: aiosmtpd's, with the handler's handle_EHLO / handle_HELO --------------

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        """aiosmtpd's, which would start TLS again inside TLS: refused once TLS is active."""
        if self.tls_active() and not arg:
            await self.reply(replies.TLS_ALREADY_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    def ehlo_keywords(self) -> list[str]:
        """The EHLO keywords (RFC 5321 §4.1.1.1), each honoured by this class (handler.handle_EHLO)."""
        keywords = [
            "PIPELINING",  # RFC 2920: aiosmtpd answers one command at a time, in order
            f"SIZE {self.config.max_message_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "SMTPUTF8",  # RFC 6531
            "ENHANCEDSTATUSCODES",  # RFC 2034: every reply, aiosmtpd's too (push)
        ]
        if self.tls_context and not self.tls_active():
            keywords.append("STARTTLS")  # RFC 3207
        if self.offers_source:
            keywords.append(EHLO_KEYWORD)  # reverse-delivery.md §2: "SOURCE 2"
        return keywords

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self.reply(replies.EXPN_DISABLED)

    # --- mail transaction (RFC 5321 §3.3) ------------------------------------------------------

    async def _transaction_refusal(self, verb: str) -> bool:
        """aiosmtpd's checks before MAIL, RCPT and DATA (greeting, AUTH where required)."""
        return await self.check_helo_needed() or await self.check_auth_needed(verb)

    def _address_argument(self, keyword: str, arg: str | None) -> tuple[str, list[str]] | None:
        if not arg or not arg[: len(keyword)].upper() == keyword:
            return None
        parsed = parse_path(arg[len(keyword):])
        if parsed is None:
            return None
        address, params = parsed
        return address, params.split()

    async def smtp_MAIL(self, arg: str | None) -> None:
        """Replaces aiosmtpd's, which parses the path with the RFC 5322 header parser (comments
        dropped, `<not an address>` made a quoted local part, `<>` kept as the text "<>") and
        answers without enhanced status codes. The sender's policy is the handler's handle_MAIL."""
        if await self._transaction_refusal("MAIL"):
            return
        if self.in_transaction:
            await self.reply(replies.NESTED_MAIL)
            return
        parsed = self._address_argument("FROM:", arg)
        if parsed is None:
            await self.reply(replies.BAD_SYNTAX(usage="MAIL FROM:<address>"))
            return
        address, params = parsed
        if params and not self.session.extended_smtp:
            await self.reply(replies.BAD_SYNTAX(usage="MAIL FROM:<address> (no parameters after HELO)"))
            return
        options = {"BODY": "7BIT", "SMTPUTF8": False}
        for param in params:
            name, eq, value = param.partition("=")
            name = name.upper()
            if unsafe(param):
                await self.reply(replies.BAD_SYNTAX(usage=f"MAIL FROM:<address> {name[:20]}=..."))
                return
            if name == "SIZE" and value.isdigit():
                # RFC 1870 §6: refuse at once what would be refused after DATA.
                if int(value) > self.config.max_message_size:
                    await self.reply(replies.MESSAGE_SIZE_EXCEEDS_LIMIT)
                    return
            elif name == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                options["BODY"] = value.upper()
            elif name == "SMTPUTF8" and not eq:
                options["SMTPUTF8"] = True
            elif name in ("SIZE", "BODY", "SMTPUTF8"):
                await self.reply(replies.BAD_SYNTAX(usage=f"MAIL FROM:<address> {name}=..."))
                return
            else:
                await self.reply(replies.PARAMETER_UNKNOWN(name=name[:20]))
                return
        if unsafe(address) or (address and not _MAILBOX.match(address)):
            await self.reply(replies.BAD_SENDER_SYNTAX)
            return
        if not address.isascii() and not options["SMTPUTF8"]:
            await self.reply(replies.NON_ASCII_ADDRESS)
            return
        self.envelope.smtp_utf8 = options["SMTPUTF8"]
        self.envelope.body_type = options["BODY"]
        status = await self._call_handler_hook("MAIL", address, params)
        await self.push(str(replies.SENDER_OK) if status is MISSING else status)

    async def smtp_RCPT(self, arg: str | None) -> None:
        """Replaces aiosmtpd's for the reasons of smtp_MAIL; the recipient's policy is the
        handler's handle_RCPT."""
        if await self._transaction_refusal("RCPT"):
            return
        if not self.in_transaction:
            await self.reply(replies.NEED_MAIL)
            return
        parsed = self._address_argument("TO:", arg)
        if parsed is None:
            await self.reply(replies.BAD_SYNTAX(usage="RCPT TO:<address>"))
            return
        address, params = parsed
        if params:
            await self.reply(replies.PARAMETER_UNKNOWN(name=params[0].partition("=")[0].upper()[:20]))
            return
        if unsafe(address) or not _MAILBOX.match(address):
            await self.reply(replies.BAD_RECIPIENT_SYNTAX)
            return
        if not address.isascii() and not self.envelope.smtp_utf8:
            await self.reply(replies.NON_ASCII_ADDRESS)
            return
        if len(self.envelope.rcpt_tos) >= self.config.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452, and the client sends the rest in another transaction.
            await self.reply(replies.TOO_MANY_RECIPIENTS)
            return
        status = await self._call_handler_hook("RCPT", address, params)
        await self.push(str(replies.RECIPIENT_OK) if status is MISSING else status)

    async def smtp_DATA(self, arg: str | None) -> None:
        """Replaces aiosmtpd's, which reads the message a line at a time into a list in memory:
        here it is read in chunks of up to DATA_CHUNK octets (data.DataReceiver finds the end,
        unstuffs, and checks the lines), and the transaction ends whatever the outcome."""
        if await self._transaction_refusal("DATA"):
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
        try:
            status = await self._receive_data()
        finally:
            self._end_transaction()
        if status is not None:
            await self.push(status)

    async def _receive_data(self) -> str | None:
        """Read the message to its final dot and hand it to handle_DATA: the reply, or None when closed."""
        receiver = DataReceiver(self.config.max_message_size, spool_directory=inbound.spool_directory())
        self.in_data = True
        try:
            while not receiver.done:
                self._reset_timeout(self.config.data_timeout)  # RFC 5321 §4.5.3.2.5: per data block
                chunk = await self._reader.read(DATA_CHUNK)
                if not chunk:
                    # Unterminated DATA: nothing is stored (RFC 5321 §4.1.1.4).
                    self.log_transaction("NOQUEUE", "lost connection in DATA")
                    self.close()
                    return None
                receiver.feed(chunk)
                if receiver.abandoned:
                    self.log_transaction("NOQUEUE", f"{replies.DATA_TOO_BIG} (closed)", size=receiver.received)
                    self.close_after_reply()
                    return str(replies.DATA_TOO_BIG)
        except asyncio.CancelledError:
            self.log_transaction("NOQUEUE", "lost connection in DATA")
            raise
        finally:
            self.in_data = False
            if not receiver.done:
                receiver.close()  # its spool too: nothing of an unterminated message is kept
        if receiver.leftover:
            # Commands pipelined after the final dot go back to the reader for aiosmtpd's loop.
            self._reader._buffer[0:0] = receiver.leftover
        outcome = receiver.outcome()
        if outcome.problem is not None:
            self.log_transaction("NOQUEUE", str(outcome.problem), size=outcome.received)
            return str(outcome.problem)
        self.envelope.content = self.envelope.original_content = outcome.content
        status = await self._call_handler_hook("DATA")
        # The message is stored or refused: its spool is read no more. (Were the session
        # cancelled while a batch still copies it, the spool closes with its last reference.)
        spool.release(outcome.content)
        self.log_transaction(self.envelope.queue_id or "NOQUEUE", status, size=outcome.received)
        return status

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
    # aiosmtpd gives a verb of our own no state checks: each is made here, in the spec's order.

    async def smtp_SOURCE(self, arg: str | None) -> None:
        reply = await self._source(arg)
        if self.in_transaction:
            self.log_transaction("NOQUEUE" if not reply.startswith("250") else f"SOURCE {arg}", reply)
        # "After any reply the transaction is over, exactly as after DATA's final reply."
        self._end_transaction()
        await self.push(reply)

    async def _source(self, arg: str | None) -> str:
        if not self.session.host_name or not self.session.extended_smtp:
            return str(replies.SOURCE_NEED_EHLO)
        if not self.in_transaction:
            return str(replies.SOURCE_NEED_MAIL)
        if not self.envelope.rcpt_tos:
            return str(replies.SOURCE_NEED_RCPT)
        if not arg or not is_valid_id(arg):
            return str(replies.SOURCE_BAD_ID)
        if self.envelope.mail_from == "":
            return str(replies.SOURCE_NULL_SENDER)
        return await self._call_handler_hook("SOURCE", arg)

    # --- GET: reverse-delivery.md §4 (origin role) ---------------------------------------------

    async def smtp_GET(self, arg: str | None) -> None:
        if not self.session.host_name or not self.session.extended_smtp:
            await self.reply(replies.GET_NEED_EHLO)
            return
        if self.in_transaction:
            await self.reply(replies.GET_IN_TRANSACTION)
            return
        if not arg or not is_valid_id(arg):
            await self.reply(replies.GET_BAD_ID)
            return
        reply, body = await self.event_handler.fetch(self.session, arg)
        if reply is replies.GET_TOO_MANY_UNKNOWN:
            # spec §6 "Guessing ids": too many unknown ids from this address this minute.
            log.warning("%s: too many unknown GET ids, closing", self.client_address)
            self.close_after_reply()
            await self.reply(reply)
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
        # Spec §4: the status line, then the envelope the id names, then the message.
        for line in replies.multiline(reply, body.envelope_lines()).split("\r\n"):
            await self.push(line)  # the continuation lines are held and written with the last one
        encoder = BodyEncoder()
        try:
            async for chunk in self.event_handler.body_chunks(stream):
                self._writer.write(encoder.feed(chunk))
                self._reset_timeout(self.config.data_timeout)
                await self._writer.drain()
        except OSError:
            # Half a body was sent: only closing without the final dot tells the client (§4).
            log.exception("GET %s: reading the stored body failed mid-transfer, closing", arg)
            self.close()
            return
        await self.push(encoder.finish() + b".")  # push() ends the terminator line
        log.info("GET %s: client=[%s], size=%s, result=%s", arg, self.client_address, body.size, reply)


def _with_status_code(status: str) -> str:
    """aiosmtpd's own reply `status` as ours (STOCK_REPLIES); any other reply as it is."""
    if status[3:4] == "-" or (status[4:5].isdigit() and status != _AUTH_ABORTED):
        return status  # a line of a multi-line reply, or one with an enhanced status code already
    for prefix, reply in STOCK_REPLIES:
        if status.startswith(prefix):
            return str(reply)
    return status

