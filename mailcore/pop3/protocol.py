"""The POP3 protocol (RFC 1939, CAPA RFC 2449, STLS RFC 2595, AUTH RFC 5034) as an asyncio protocol."""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import ssl
from dataclasses import dataclass

from mailcore.pop3.maildrop import Account, LockLost, LoginBlocked, Maildrop, MaildropEntry, ReadAhead
from mailcore.wire.sasl import parse_plain
from mailcore.wire.transparency import CRLF, TERMINATOR, BodyEncoder

log = logging.getLogger("mailcore.pop3")

# --- replies (RFC 1939 §3; response codes in brackets: RFC 2449 §8, RFC 3206) ------------------

OK = "+OK"
GREETING = "+OK {hostname} POP3 server ready"
BYE = "+OK {hostname} signing off"
BYE_UPDATED = "+OK {hostname} signing off ({deleted} messages deleted)"
UNKNOWN_COMMAND = "-ERR unknown command"
WRONG_STATE = "-ERR command not valid in this state"
SYNTAX = "-ERR syntax error in arguments"
LINE_TOO_LONG = "-ERR line too long"
TOO_MANY_BAD = "-ERR too many bad commands; closing"
NO_SUCH_MESSAGE = "-ERR no such message"
INVALID_NUMBER = "-ERR invalid message number"
ALREADY_DELETED = "-ERR message {n} already deleted"
NEGATIVE_LINES = "-ERR line count must be a non-negative number"
NO_USER = "-ERR give USER first"
AUTH_FAILED = "-ERR [AUTH] invalid user name or password"
AUTH_BLOCKED = "-ERR [AUTH] too many failed logins from your address; try again later"
AUTH_PLAINTEXT = "-ERR [AUTH] plaintext authentication is not allowed without TLS: use STLS first"
AUTH_CANCELLED = "-ERR authentication cancelled"
AUTH_BAD_BASE64 = "-ERR invalid base64 in authentication response"
AUTH_UNKNOWN_MECHANISM = "-ERR unknown authentication mechanism"
IN_USE = "-ERR [IN-USE] maildrop is locked by another session"
TEMPORARY = "-ERR [SYS/TEMP] temporary server error; try again later"
UPDATE_FAILED = "-ERR [SYS/TEMP] some deleted messages not removed; try again later"
TLS_UNAVAILABLE = "-ERR STLS is not available"
TLS_ACTIVE = "-ERR TLS is already active"
TLS_GO = "+OK begin TLS negotiation"
TOO_MANY_CONNECTIONS = "-ERR [SYS/TEMP] too many connections; try again later"

# A client that drops its connection and logs in again at once (a mail client polling again)
# must not meet its own last session's lock: that session releases it once the server has seen
# the connection close, which can come a moment after the new login, on another process even.
# The login waits that moment, polling, before it answers IN-USE.
LOCK_WAIT = 1.0
LOCK_POLL = 0.05

# RFC 5034 §4: the 255-octet command limit of RFC 2449 does not bind AUTH's client responses.
SASL_LINE_LIMIT = 8192
IMPLEMENTATION = "mailcore"


@dataclass(frozen=True)
class Pop3Config:
    hostname: str
    idle_timeout: float = 600.0  # RFC 1939 §3: at least 10 minutes
    max_line: int = 255  # RFC 2449 §4, CRLF included
    max_bad_commands: int = 10
    auth_failure_delay: float = 2.0
    auth_max_failures: int = 5
    auth_failure_window: float = 300.0
    plaintext: str = "loopback"  # loopback | always | never: where USER/PASS and PLAIN work before TLS
    lock_ttl: float = 300.0
    max_connections: int = 200
    max_connections_per_client: int = 20
    shutdown_grace: float = 10.0
    tls_handshake_timeout: float = 30.0


class SessionEnd(Exception):
    """The session is over: close the connection without UPDATE unless QUIT ran it."""


# What next_line gives for a line longer than its limit (the line itself is discarded).
OVERLONG = object()
# Input held while a command is in progress, beyond which the session stops reading the socket.
INPUT_HELD = 2 * SASL_LINE_LIMIT
# What one read from a socket takes at most.
RECEIVE_BUFFER = 64 * 1024


class Pop3Session(asyncio.BufferedProtocol):
    """One connection: the AUTHORIZATION and TRANSACTION states, then UPDATE on QUIT (RFC 1939 §3).

    A protocol, not a coroutine on streams: most commands (an in-order RETR whose reply was read
    ahead, STAT, LIST, DELE, NOOP...) are answered from memory, and `buffer_updated` answers them
    at once, with one `transport.write` each: no task, no future, no timer per command. A command
    that needs a worker thread (logins, UPDATE, a body not read ahead) or the client (a SASL
    continuation, a slow reader of a large body) returns a coroutine; it runs as a task, and
    commands that arrive meanwhile wait in the input buffer, so replies stay in order (RFC 2449 §6.6).
    """

    def __init__(self, server: Pop3Server, implicit_tls: bool):
        self.server = server
        self.config = server.config
        self.maildrop: Maildrop = server.maildrop
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.tls = implicit_tls
        self.peer = "unknown"
        self.state = "AUTHORIZATION"
        self.user: str | None = None
        self.attempted = "-"  # the last name a login was tried for, for the log
        self.account: Account | None = None
        self.locked = False
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self.entries: list[MaildropEntry] = []
        self.deleted: set[int] = set()  # message numbers, 1-based
        self.retrieved: set[int] = set()
        self.read_ahead = ReadAhead(self.maildrop)  # RETR's; holds nothing until the first RETR
        self.bad_commands = 0
        self.auth_failures = 0
        self.heartbeat: asyncio.Task | None = None
        self.outcome = "dropped"
        self.deleted_count = 0
        self.inbox = bytearray()  # what the client sent that no command has taken yet
        self.discarding = False  # inside an overlong line, dropping it up to its end
        self.command: asyncio.Task | None = None  # the command in progress off the fast path
        self.waiter: asyncio.Future | None = None  # that command waiting for the client
        self.writing_paused = False
        self.reading_paused = False
        self.lost = False  # the connection is gone
        self.at_eof = False  # the client sends nothing more
        self.closed = self.loop.create_future()  # set when it is gone
        self.ending = False
        # RFC 1939 §3's autologout timer: one timer per session, re-armed only when it fires.
        # `idle_since` is when the session began waiting for the client, None while it works.
        self.idle_since: float | None = None
        self.idle_timer: asyncio.TimerHandle | None = None

    # --- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        self.peer = str(peer[0])
        if not self.server.admit(self):
            transport.write((TOO_MANY_CONNECTIONS + "\r\n").encode("ascii"))
            transport.close()  # after the reply is flushed
            self.ending = True
            log.info("pop3: refused a connection from %s: too many connections", self.peer)
            return
        self.idle_since = self.loop.time()
        self.idle_timer = self.loop.call_at(self.idle_since + self.config.idle_timeout, self.check_idle)
        self.send(GREETING.format(hostname=self.config.hostname))

    def get_buffer(self, sizehint: int) -> memoryview:
        # One receive buffer for all the sessions of the server: what arrives is copied out at
        # once (buffer_updated), and receiving into it spares the 256 KB allocation that asyncio
        # makes for every recv() of a plain Protocol, much of what reading a command costs.
        return self.server.receive_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.ending:
            return
        self.inbox += self.server.receive_buffer[:nbytes]
        if self.command is None and not self.writing_paused:
            self.process()
        elif self.waiter is not None:
            self.wake()
        if len(self.inbox) > INPUT_HELD and not self.reading_paused:
            # A command in progress, or a client that does not read its replies: hold what it
            # pipelines within bounds (process() reads again once it has answered it all).
            self.transport.pause_reading()
            self.reading_paused = True

    def eof_received(self) -> bool:
        # The client sends nothing more, but may still read: what it sent before is answered
        # (`printf 'USER..PASS..STAT..QUIT' | nc`), then the session ends.
        self.at_eof = True
        if self.waiter is not None:
            self.wake(asyncio.IncompleteReadError(b"", None))
        elif self.command is None and not self.ending:
            self.process()
        return True  # keep the transport open for the replies

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.writing_paused = False  # nothing will resume it: what is left to answer fails at its write
        if not self.closed.done():
            self.closed.set_result(None)
        if self.ending:
            return
        if self.waiter is not None:
            self.wake(asyncio.IncompleteReadError(b"", None))
        elif self.command is None:
            self.process()  # commands the client sent before it left are still answered (QUIT's UPDATE)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.waiter is not None:
            self.wake()
        elif self.command is None and not self.ending:
            self.process()

    def check_idle(self) -> None:
        since = self.idle_since
        now = self.loop.time()
        if since is None or now < since + self.config.idle_timeout:
            self.idle_timer = self.loop.call_at((since or now) + self.config.idle_timeout, self.check_idle)
            return
        # RFC 1939 §3: on the autologout timer the server closes without a response and without UPDATE.
        self.idle_timer = None
        if self.waiter is not None:
            self.wake(TimeoutError())
        else:
            self.end_session("idle timeout")

    # --- commands, in order ----------------------------------------------------------------

    def process(self) -> None:
        """Answer the complete command lines received, until one needs a task or the client."""
        while self.command is None and not self.ending:
            if self.writing_paused:
                # A client that stops reading is as idle as one that stops writing.
                self.idle_since = self.loop.time()
                return
            line = self.next_line(self.config.max_line)
            if line is None:
                if self.lost or self.at_eof:
                    self.end_session("closed by client without QUIT")
                    return
                self.idle_since = self.loop.time()
                if self.reading_paused:
                    self.reading_paused = False
                    self.transport.resume_reading()
                return
            self.dispatch(line)

    def next_line(self, limit: int):
        """One line without its line end, OVERLONG if it was longer than `limit`, None if none is complete."""
        inbox = self.inbox
        end = inbox.find(b"\n")
        if end < 0:
            if len(inbox) > SASL_LINE_LIMIT:
                # Drop what is held and keep dropping to the line's end: memory stays flat.
                self.discarding = True
                inbox.clear()
            return None
        line = bytes(inbox[: end + 1])
        del inbox[: end + 1]
        if self.discarding or len(line) > limit:
            self.discarding = False
            return OVERLONG
        return line.rstrip(b"\r\n")

    def dispatch(self, line) -> None:
        verb = "-"
        try:
            if line is OVERLONG:
                self.bad(LINE_TOO_LONG)
                return
            text = line.decode("utf-8", "surrogateescape")
            keyword, _, argument = text.partition(" ")
            verb = keyword.upper()
            handler = COMMANDS.get(verb)
            if handler is None:
                self.bad(UNKNOWN_COMMAND)
                return
            states, method = handler
            if self.state not in states:
                self.bad(WRONG_STATE)
                return
            if verb != "PASS":  # RFC 1939 §7: a password may contain spaces
                argument = argument.strip()
            pending = method(self, argument)
        except Exception as exc:
            self.failed(verb, exc)
            return
        if pending is not None:  # the command goes on in a task; what follows it waits
            self.idle_since = None
            self.command = self.loop.create_task(self.finish(verb, pending))

    async def finish(self, verb: str, pending) -> None:
        try:
            await pending
        except Exception as exc:
            self.failed(verb, exc)
        self.command = None
        if not self.ending:
            self.process()

    def failed(self, verb: str, exc: Exception) -> None:
        """What a command raised: the end of the session, or a temporary error and the session goes on."""
        try:
            if isinstance(exc, SessionEnd):
                self.end_session()
            elif isinstance(exc, TimeoutError):
                self.end_session("idle timeout")
            elif isinstance(exc, asyncio.IncompleteReadError):
                self.end_session("closed by client without QUIT")
            elif isinstance(exc, (ConnectionError, ssl.SSLError)):
                self.end_session(f"dropped ({exc.__class__.__name__})")
            elif isinstance(exc, LockLost):
                self.send(UPDATE_FAILED)
                self.end_session("lock lost")
            else:  # our fault (database down, store unreadable): temporary, never a traceback to the client
                log.error(
                    "pop3: %s failed for %s",
                    verb,
                    self.account.address if self.account else self.peer,
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
                self.send(TEMPORARY)
        except ConnectionError as gone:
            self.end_session(f"dropped ({gone.__class__.__name__})")

    # --- the end -----------------------------------------------------------------------------

    def end_session(self, outcome: str | None = None) -> None:
        """Stop answering and close: the lock is released, the connection closed, the session logged."""
        if self.ending:
            return
        self.ending = True
        if outcome is not None:
            self.outcome = outcome
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.inbox.clear()
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        ending = self.loop.create_task(self.end())
        self.server.endings.add(ending)
        ending.add_done_callback(self.server.endings.discard)

    async def end(self) -> None:
        try:
            if self.account is not None and self.locked:
                try:
                    await self.maildrop.unlock(self.account, self.holder)
                except Exception as exc:  # the lock then lapses at its expiry
                    log.warning("pop3: could not release the lock of %s: %s", self.account.address, exc)
            self.transport.close()  # what was written is flushed first
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), 5)
            except TimeoutError:
                self.transport.abort()
            log.info(
                "pop3 session client=%s user=%s tls=%s retrieved=%d deleted=%d end=%s",
                self.peer,
                self.account.address if self.account else self.attempted,
                "yes" if self.tls else "no",
                len(self.retrieved),
                self.deleted_count,
                self.outcome,
            )
        finally:
            self.server.release(self)

    def abort(self) -> None:
        """Shutdown after the grace period: close without UPDATE, whatever the session was doing."""
        if self.command is not None:
            self.command.cancel()
        self.end_session("closed at shutdown")

    # --- talking to the client -----------------------------------------------------------------

    def send(self, *lines: str) -> None:
        self.write("".join(f"{line}\r\n" for line in lines).encode("utf-8"))

    def write(self, data: bytes) -> None:
        """Queue a reply; flow control (pause_writing) holds the next command while the client lags."""
        if self.lost or self.transport.is_closing():
            raise ConnectionResetError("connection lost")
        self.transport.write(data)

    def wake(self, exc: BaseException | None = None) -> None:
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def wait_for_client(self) -> None:
        """Until the client sends or reads something, or the idle timer fires."""
        self.waiter = self.loop.create_future()
        self.idle_since = self.loop.time()
        try:
            await self.waiter
        finally:
            self.waiter = None
            self.idle_since = None

    async def read_line(self, limit: int):
        """A line inside a command (a SASL response): None if it was longer than `limit`."""
        while (line := self.next_line(limit)) is None:
            if self.lost or self.at_eof:
                raise asyncio.IncompleteReadError(b"", None)
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            await self.wait_for_client()
        return None if line is OVERLONG else line

    async def writable(self) -> None:
        """Wait while the transport holds more than its high-water mark (inside a long reply)."""
        while self.writing_paused:
            if self.lost:
                raise ConnectionResetError("connection lost")
            await self.wait_for_client()
        if self.lost or self.transport.is_closing():
            raise ConnectionResetError("connection lost")

    def bad(self, reply: str) -> None:
        """A client error: reply, and close after too many of them."""
        self.bad_commands += 1
        if self.bad_commands >= self.config.max_bad_commands:
            self.send(TOO_MANY_BAD)
            self.outcome = "too many bad commands"
            raise SessionEnd
        self.send(reply)

    # --- AUTHORIZATION (RFC 1939 §4, §7) ---------------------------------------------------

    def plaintext_allowed(self) -> bool:
        if self.tls or self.config.plaintext == "always":
            return True
        if self.config.plaintext == "loopback":
            with contextlib.suppress(ValueError):
                address = ipaddress.ip_address(self.peer)
                if address.version == 6 and address.ipv4_mapped:
                    address = address.ipv4_mapped
                return address.is_loopback
        return False

    def cmd_capa(self, argument: str) -> None:
        # RFC 2449 §5: the list for the state the session is in.
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == "AUTHORIZATION":
            if self.plaintext_allowed():
                caps += ["USER", "SASL PLAIN"]
            if self.server.tls_context is not None and not self.tls:
                caps.append("STLS")
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        self.send("+OK capability list follows", *caps, ".")

    def cmd_user(self, argument: str) -> None:
        if not self.plaintext_allowed():
            self.bad(AUTH_PLAINTEXT)
            return
        if not argument or " " in argument:
            self.bad(SYNTAX)
            return
        # The same answer for every name, so USER does not tell which mailboxes exist.
        self.user = argument
        self.send(OK + " send PASS")

    async def cmd_pass(self, argument: str) -> None:
        if self.user is None:
            self.bad(NO_USER)
            return
        user, self.user = self.user, None
        self.attempted = user
        await self.login(user, argument)

    async def cmd_auth(self, argument: str) -> None:
        if not argument:
            self.send(OK + " SASL mechanisms follow", "PLAIN", ".")
            return
        mechanism, _, initial = argument.partition(" ")
        if mechanism.upper() != "PLAIN":
            self.bad(AUTH_UNKNOWN_MECHANISM)
            return
        if not self.plaintext_allowed():
            self.bad(AUTH_PLAINTEXT)
            return
        if not initial:
            self.send("+ ")  # RFC 5034 §4: an empty challenge
            line = await self.read_line(SASL_LINE_LIMIT)
            if line is None:
                self.bad(LINE_TOO_LONG)
                return
            initial = line.decode("ascii", "replace").strip()
            if initial == "*":
                self.send(AUTH_CANCELLED)
                return
        elif initial == "=":
            initial = ""  # RFC 5034 §4: "=" is an empty initial response
        try:
            decoded = base64.b64decode(initial, validate=True)
        except (binascii.Error, ValueError):
            self.bad(AUTH_BAD_BASE64)
            return
        plain = parse_plain(decoded)
        if plain is None or plain.acts_for_another():
            await self.fail_login()
            return
        self.attempted = plain.authcid
        await self.login(plain.authcid, plain.password)

    async def take_lock(self, account: Account) -> bool:
        deadline = self.loop.time() + LOCK_WAIT
        while not await self.maildrop.lock(account, self.holder):
            if self.loop.time() >= deadline:
                return False
            await asyncio.sleep(LOCK_POLL)
        return True

    async def login(self, address: str, password: str) -> None:
        try:
            account = await self.maildrop.authenticate(address, password, self.peer)
        except LoginBlocked:
            await asyncio.sleep(self.config.auth_failure_delay)
            self.send(AUTH_BLOCKED)
            self.outcome = "login blocked"
            raise SessionEnd from None
        if account is None:
            await self.fail_login(counted=True)
            return
        if not await self.take_lock(account):
            self.send(IN_USE)
            return
        self.account = account
        self.locked = True
        try:
            self.entries = await self.maildrop.listing(account)
        except BaseException:
            await self.maildrop.unlock(account, self.holder)
            self.account, self.locked = None, False
            raise
        self.state = "TRANSACTION"
        self.heartbeat = asyncio.create_task(self.keep_lock())
        count, size = self.totals()
        self.send(f"{OK} {account.address} has {count} messages ({size} octets)")

    async def fail_login(self, counted: bool = False) -> None:
        """A failed login; `counted`: authenticate has counted it already (before the password check)."""
        if not counted:
            await self.maildrop.record_login_failure(self.peer)
        self.auth_failures += 1
        # RFC 1939 §13 and RFC 3206: a delay slows password guessing; [AUTH] says the credentials were wrong.
        await asyncio.sleep(self.config.auth_failure_delay)
        self.send(AUTH_FAILED)
        if self.auth_failures >= self.config.auth_max_failures or await self.maildrop.login_blocked(self.peer):
            self.outcome = "too many failed logins"
            raise SessionEnd

    async def keep_lock(self) -> None:
        """Refresh the maildrop lock well before it lapses; it lapses by itself if this process dies."""
        while True:
            await asyncio.sleep(self.config.lock_ttl / 3)
            try:
                if not await self.maildrop.refresh(self.account, self.holder):
                    log.warning("pop3: lock of %s lapsed; QUIT will not delete", self.account.address)
                    return
            except Exception as exc:  # a database hiccup: try again at the next beat
                log.warning("pop3: could not refresh the lock of %s: %s", self.account.address, exc)

    def cmd_stls(self, argument: str):
        if self.tls:
            self.bad(TLS_ACTIVE)
            return None
        if self.server.tls_context is None:
            self.bad(TLS_UNAVAILABLE)
            return None
        # RFC 2595 §4 (and the STARTTLS command-injection bugs): anything the client pipelined
        # after STLS arrived in plaintext and must not be read as if it came through TLS.
        self.inbox.clear()
        self.write(f"{TLS_GO}\r\n".encode("ascii"))
        # Not one more read in plaintext: the client's ClientHello is for the TLS layer, which
        # starts reading where this leaves off (start_tls resumes reading once it is in place).
        self.transport.pause_reading()
        return self.start_tls()

    async def start_tls(self) -> None:
        try:
            self.transport = await self.loop.start_tls(
                self.transport,
                self,
                self.server.tls_context,
                server_side=True,
                ssl_handshake_timeout=self.config.tls_handshake_timeout,
            )
        except BaseException:
            # A failed handshake closes the connection without telling this protocol.
            self.connection_lost(None)
            raise
        self.tls = True
        self.user = None  # RFC 2595 §4: forget what was said before TLS

    async def cmd_quit(self, argument: str) -> None:
        if argument:
            self.bad(SYNTAX)
            return
        if self.state == "TRANSACTION":
            # RFC 1939 §6: the UPDATE state. Deletions happen here, all in one transaction, or not at all.
            self.state = "UPDATE"
            if self.heartbeat is not None:
                self.heartbeat.cancel()
            deleted = [self.entries[n - 1].delivery_id for n in sorted(self.deleted)]
            retrieved = [self.entries[n - 1].delivery_id for n in sorted(self.retrieved)]
            try:
                self.deleted_count = await self.maildrop.update(self.account, self.holder, deleted, retrieved)
                # Released before the goodbye, so a client that reconnects at once finds the maildrop free.
                await self.maildrop.unlock(self.account, self.holder)
                self.locked = False
            except LockLost:
                raise
            except Exception:
                log.exception("pop3: UPDATE failed for %s", self.account.address)
                self.send(UPDATE_FAILED)
                self.outcome = "update failed"
                raise SessionEnd from None
            self.send(BYE_UPDATED.format(hostname=self.config.hostname, deleted=self.deleted_count))
        else:
            self.send(BYE.format(hostname=self.config.hostname))
        self.outcome = "quit"
        raise SessionEnd

    # --- TRANSACTION (RFC 1939 §5, §7) ------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        live = [e for n, e in enumerate(self.entries, 1) if n not in self.deleted]
        return len(live), sum(e.size for e in live)

    def message_number(self, text: str) -> int | None:
        """The number of a message that exists and is not deleted, or None after an -ERR."""
        if not text.isascii() or not text.isdigit():
            self.bad(INVALID_NUMBER)
            return None
        n = int(text)
        if not 1 <= n <= len(self.entries):
            self.bad(NO_SUCH_MESSAGE)
            return None
        if n in self.deleted:
            self.bad(ALREADY_DELETED.format(n=n))
            return None
        return n

    def cmd_stat(self, argument: str) -> None:
        if argument:
            self.bad(SYNTAX)
            return
        count, size = self.totals()
        self.send(f"{OK} {count} {size}")

    def cmd_list(self, argument: str) -> None:
        self.scan_listing(argument, lambda n, e: f"{n} {e.size}", "scan listing follows")

    def cmd_uidl(self, argument: str) -> None:
        self.scan_listing(argument, lambda n, e: f"{n} {e.uid}", "unique-id listing follows")

    def scan_listing(self, argument: str, render, title: str) -> None:
        if " " in argument:
            self.bad(SYNTAX)
            return
        if argument:
            n = self.message_number(argument)
            if n is not None:
                self.send(f"{OK} {render(n, self.entries[n - 1])}")
            return
        lines = [render(n, e) for n, e in enumerate(self.entries, 1) if n not in self.deleted]
        count, size = self.totals()
        header = f"{OK} {count} messages ({size} octets)" if title.startswith("scan") else f"{OK} {title}"
        self.write((header + "\r\n" + "".join(f"{line}\r\n" for line in lines) + ".\r\n").encode("ascii"))

    def cmd_retr(self, argument: str):
        n = self.message_number(argument)
        if n is None:
            return None
        reply = self.read_ahead.ready(self.entries, n, self.deleted)
        if reply is None:
            return self.retrieve(n)  # a trip to a worker thread first
        # The usual case: read ahead, the whole reply (status line, body, terminator) in one write.
        self.write(reply)
        self.retrieved.add(n)
        return None

    async def retrieve(self, n: int) -> None:
        entry = self.entries[n - 1]
        reply = await self.read_ahead.take(self.entries, n, self.deleted)
        if reply is None:
            await self.stream(entry, BodyEncoder(), f"{OK} {entry.size} octets")
        else:
            self.write(reply)
        self.retrieved.add(n)

    def cmd_top(self, argument: str):
        parts = argument.split()
        if len(parts) != 2:
            self.bad(SYNTAX)
            return None
        count = parts[1]
        if not (count.isascii() and count.isdigit()):
            self.bad(NEGATIVE_LINES)
            return None
        n = self.message_number(parts[0])
        if n is None:
            return None
        return self.stream(self.entries[n - 1], BodyEncoder(body_lines=int(count)), f"{OK} top of message follows")

    async def stream(self, entry: MaildropEntry, encoder: BodyEncoder, status: str) -> None:
        """Send a body: a typical one in one write with its status line and terminator, a large
        one chunk by chunk, waiting for the client only when the transport's buffer is full."""
        async with contextlib.aclosing(self.maildrop.body(entry)) as chunks:
            # Read the first chunk before answering: an unreadable body is then still a clean -ERR.
            first = await anext(chunks, b"")
            pending = status.encode("ascii") + CRLF + encoder.feed(first)
            try:
                async for chunk in chunks:
                    if encoder.done:
                        break
                    self.write(pending)
                    await self.writable()
                    pending = encoder.feed(chunk)
            except (TimeoutError, ConnectionError):
                raise
            except OSError as exc:
                # The +OK is out: an error line now would read as message text. Closing tells the client.
                log.error("pop3: reading body %s failed mid-response: %s", entry.body_ref, exc)
                self.outcome = "store error"
                raise SessionEnd from None
        self.write(pending + encoder.finish() + TERMINATOR)

    def cmd_dele(self, argument: str) -> None:
        n = self.message_number(argument)
        if n is not None:
            self.deleted.add(n)
            self.send(f"{OK} message {n} deleted")

    def cmd_noop(self, argument: str) -> None:
        if argument:
            self.bad(SYNTAX)
            return
        self.send(OK)

    def cmd_rset(self, argument: str) -> None:
        if argument:
            self.bad(SYNTAX)
            return
        self.deleted.clear()
        count, size = self.totals()
        self.send(f"{OK} maildrop has {count} messages ({size} octets)")


AUTHORIZATION = ("AUTHORIZATION",)
TRANSACTION = ("TRANSACTION",)
BOTH = ("AUTHORIZATION", "TRANSACTION")

# APOP (RFC 1939 §7) is left out on purpose: it needs the clear-text password on the server, and we
# keep only a slow one-way hash of it.
COMMANDS = {
    "CAPA": (BOTH, Pop3Session.cmd_capa),
    "USER": (AUTHORIZATION, Pop3Session.cmd_user),
    "PASS": (AUTHORIZATION, Pop3Session.cmd_pass),
    "AUTH": (AUTHORIZATION, Pop3Session.cmd_auth),
    "STLS": (AUTHORIZATION, Pop3Session.cmd_stls),
    "QUIT": (BOTH, Pop3Session.cmd_quit),
    "STAT": (TRANSACTION, Pop3Session.cmd_stat),
    "LIST": (TRANSACTION, Pop3Session.cmd_list),
    "UIDL": (TRANSACTION, Pop3Session.cmd_uidl),
    "RETR": (TRANSACTION, Pop3Session.cmd_retr),
    "TOP": (TRANSACTION, Pop3Session.cmd_top),
    "DELE": (TRANSACTION, Pop3Session.cmd_dele),
    "NOOP": (TRANSACTION, Pop3Session.cmd_noop),
    "RSET": (TRANSACTION, Pop3Session.cmd_rset),
}


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Pop3Server:
    """The listeners, the connection caps and graceful shutdown of one runpop3 process."""

    def __init__(self, config: Pop3Config, maildrop: Maildrop, tls_context: ssl.SSLContext | None = None):
        self.config = config
        self.maildrop = maildrop
        self.tls_context = tls_context
        self.listeners: list[asyncio.base_events.Server] = []
        self.sessions: set[Pop3Session] = set()
        self.per_client: collections.Counter[str] = collections.Counter()
        self.endings: set[asyncio.Task] = set()  # sessions closing (the loop keeps only weak references)
        self.receive_buffer = memoryview(bytearray(RECEIVE_BUFFER))  # see Pop3Session.get_buffer
        self.all_ended: asyncio.Event | None = None  # set up by stop()

    async def start(self, binds: list[tuple[str, int]], tls_binds: list[tuple[str, int]] = ()) -> None:
        loop = asyncio.get_running_loop()
        for (host, port), implicit_tls in [(b, False) for b in binds] + [(b, True) for b in tls_binds]:
            server = await loop.create_server(
                lambda t=implicit_tls: Pop3Session(self, t),
                host,
                port,
                ssl=self.tls_context if implicit_tls else None,
                ssl_handshake_timeout=self.config.tls_handshake_timeout if implicit_tls else None,
                reuse_address=True,
            )
            self.listeners.append(server)
            kind = "POP3 with implicit TLS" if implicit_tls else "POP3"
            starttls = ", STLS offered" if self.tls_context is not None and not implicit_tls else ""
            log.info("pop3: %s listening on %s%s", kind, format_address(host, port), starttls)

    def admit(self, session: Pop3Session) -> bool:
        """Count a new session in, or refuse it over the caps."""
        client = session.peer
        if len(self.sessions) >= self.config.max_connections or (
            self.per_client[client] >= self.config.max_connections_per_client
        ):
            return False
        self.sessions.add(session)
        self.per_client[client] += 1
        return True

    def release(self, session: Pop3Session) -> None:
        self.sessions.discard(session)
        self.per_client[session.peer] -= 1
        if not self.per_client[session.peer]:
            del self.per_client[session.peer]
        if not self.sessions and self.all_ended is not None:
            self.all_ended.set()

    async def stop(self) -> None:
        """Stop accepting; give sessions in flight the grace period to QUIT, then close them without UPDATE."""
        for listener in self.listeners:
            listener.close()
        log.info("pop3: stopping; %d sessions in flight", len(self.sessions))
        self.all_ended = asyncio.Event()
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_ended.wait(), self.config.shutdown_grace)
            for session in list(self.sessions):
                session.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_ended.wait(), 10)
        log.info("pop3: stopped")
