"""The POP3 protocol (RFC 1939, CAPA RFC 2449, STLS RFC 2595, AUTH RFC 5034) on asyncio streams."""

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

from mailcore.pop3.maildrop import Account, LockLost, Maildrop, MaildropEntry, ReadAhead
from mailcore.pop3.wire import CRLF, TERMINATOR, BodyEncoder

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


class Pop3Session:
    """One connection: the AUTHORIZATION and TRANSACTION states, then UPDATE on QUIT (RFC 1939 §3)."""

    def __init__(self, server: Pop3Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool):
        self.server = server
        self.config = server.config
        self.maildrop: Maildrop = server.maildrop
        self.reader = reader
        self.writer = writer
        self.tls = tls
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        self.peer = str(peer[0])
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

    # --- the session loop ----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.send(GREETING.format(hostname=self.config.hostname))
            while True:
                line = await self.read_line(self.config.max_line)
                if line is None:
                    await self.bad(LINE_TOO_LONG)
                    continue
                await self.dispatch(line)
        except SessionEnd:
            pass
        except TimeoutError:
            # RFC 1939 §3: on the autologout timer the server closes without a response and without UPDATE.
            self.outcome = "idle timeout"
        except asyncio.IncompleteReadError:
            self.outcome = "closed by client without QUIT"
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.outcome = f"dropped ({exc.__class__.__name__})"
        finally:
            await self.end()

    async def end(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        if self.account is not None and self.locked:
            try:
                await self.maildrop.unlock(self.account, self.holder)
            except Exception as exc:  # the lock then lapses at its expiry
                log.warning("pop3: could not release the lock of %s: %s", self.account.address, exc)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        log.info(
            "pop3 session client=%s user=%s tls=%s retrieved=%d deleted=%d end=%s",
            self.peer,
            self.account.address if self.account else self.attempted,
            "yes" if self.tls else "no",
            len(self.retrieved),
            self.deleted_count,
            self.outcome,
        )

    async def read_line(self, limit: int) -> bytes | None:
        """One line without its line end, None if it was longer than `limit`; idle timeout applies."""
        return await asyncio.wait_for(self._read_line(limit), self.config.idle_timeout)

    async def _read_line(self, limit: int) -> bytes | None:
        overlong = False
        while True:
            try:
                line = await self.reader.readuntil(b"\n")
                break
            except asyncio.LimitOverrunError as exc:
                # Discard what the buffer holds and keep reading to the line's end: memory stays flat.
                overlong = True
                await self.reader.readexactly(exc.consumed)
        if overlong or len(line) > limit:
            return None
        return line.rstrip(b"\r\n")

    async def send(self, *lines: str) -> None:
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode("utf-8"))
        await self.drain()

    async def drain(self) -> None:
        # A client that stops reading is as idle as one that stops writing.
        await asyncio.wait_for(self.writer.drain(), self.config.idle_timeout)

    async def bad(self, reply: str) -> None:
        """A client error: reply, and close after too many of them."""
        self.bad_commands += 1
        if self.bad_commands >= self.config.max_bad_commands:
            await self.send(TOO_MANY_BAD)
            self.outcome = "too many bad commands"
            raise SessionEnd
        await self.send(reply)

    async def dispatch(self, line: bytes) -> None:
        text = line.decode("utf-8", "surrogateescape")
        keyword, _, argument = text.partition(" ")
        verb = keyword.upper()
        handler = COMMANDS.get(verb)
        if handler is None:
            await self.bad(UNKNOWN_COMMAND)
            return
        states, method = handler
        if self.state not in states:
            await self.bad(WRONG_STATE)
            return
        if verb != "PASS":  # RFC 1939 §7: a password may contain spaces
            argument = argument.strip()
        try:
            await method(self, argument)
        except (TimeoutError, SessionEnd, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            raise  # the connection is gone or over: run() ends the session
        except LockLost:
            await self.send(UPDATE_FAILED)
            self.outcome = "lock lost"
            raise SessionEnd from None
        except Exception:  # our fault (database down, store unreadable): temporary, never a traceback to the client
            log.exception("pop3: %s failed for %s", verb, self.account.address if self.account else self.peer)
            await self.send(TEMPORARY)

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

    async def cmd_capa(self, argument: str) -> None:
        # RFC 2449 §5: the list for the state the session is in.
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == "AUTHORIZATION":
            if self.plaintext_allowed():
                caps += ["USER", "SASL PLAIN"]
            if self.server.tls_context is not None and not self.tls:
                caps.append("STLS")
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        await self.send("+OK capability list follows", *caps, ".")

    async def cmd_user(self, argument: str) -> None:
        if not self.plaintext_allowed():
            await self.bad(AUTH_PLAINTEXT)
            return
        if not argument or " " in argument:
            await self.bad(SYNTAX)
            return
        # The same answer for every name, so USER does not tell which mailboxes exist.
        self.user = argument
        await self.send(OK + " send PASS")

    async def cmd_pass(self, argument: str) -> None:
        if self.user is None:
            await self.bad(NO_USER)
            return
        user, self.user = self.user, None
        self.attempted = user
        await self.login(user, argument)

    async def cmd_auth(self, argument: str) -> None:
        if not argument:
            await self.send(OK + " SASL mechanisms follow", "PLAIN", ".")
            return
        mechanism, _, initial = argument.partition(" ")
        if mechanism.upper() != "PLAIN":
            await self.bad(AUTH_UNKNOWN_MECHANISM)
            return
        if not self.plaintext_allowed():
            await self.bad(AUTH_PLAINTEXT)
            return
        if not initial:
            await self.send("+ ")  # RFC 5034 §4: an empty challenge
            line = await self.read_line(SASL_LINE_LIMIT)
            if line is None:
                await self.bad(LINE_TOO_LONG)
                return
            initial = line.decode("ascii", "replace").strip()
            if initial == "*":
                await self.send(AUTH_CANCELLED)
                return
        elif initial == "=":
            initial = ""  # RFC 5034 §4: "=" is an empty initial response
        try:
            decoded = base64.b64decode(initial, validate=True)
        except (binascii.Error, ValueError):
            await self.bad(AUTH_BAD_BASE64)
            return
        parts = decoded.split(b"\0")
        try:
            authzid, authcid, password = (part.decode("utf-8") for part in parts) if len(parts) == 3 else ("", "", "")
        except UnicodeDecodeError:
            authzid, authcid, password = "", "", ""
        if not authcid or (authzid and authzid != authcid):
            # RFC 4616 §2: we authorise no one to act as another mailbox.
            await self.fail_login()
            return
        self.attempted = authcid
        await self.login(authcid, password)

    async def login(self, address: str, password: str) -> None:
        if await self.maildrop.login_blocked(self.peer):
            await asyncio.sleep(self.config.auth_failure_delay)
            await self.send(AUTH_BLOCKED)
            self.outcome = "login blocked"
            raise SessionEnd
        account = await self.maildrop.authenticate(address, password)
        if account is None:
            await self.fail_login()
            return
        if not await self.maildrop.lock(account, self.holder):
            await self.send(IN_USE)
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
        await self.send(f"{OK} {account.address} has {count} messages ({size} octets)")

    async def fail_login(self) -> None:
        await self.maildrop.record_login_failure(self.peer)
        self.auth_failures += 1
        # RFC 1939 §13 and RFC 3206: a delay slows password guessing; [AUTH] says the credentials were wrong.
        await asyncio.sleep(self.config.auth_failure_delay)
        await self.send(AUTH_FAILED)
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

    async def cmd_stls(self, argument: str) -> None:
        if self.tls:
            await self.bad(TLS_ACTIVE)
            return
        if self.server.tls_context is None:
            await self.bad(TLS_UNAVAILABLE)
            return
        # RFC 2595 §4 (and the STARTTLS command-injection bugs): anything the client pipelined
        # after STLS arrived in plaintext and must not be read as if it came through TLS.
        self.reader._buffer.clear()  # noqa: SLF001 - asyncio offers no public way to drop buffered input
        # No await between the +OK and start_tls: the loop would otherwise read the client's
        # ClientHello into the plaintext buffer, where the TLS layer never sees it.
        self.writer.write(f"{TLS_GO}\r\n".encode("ascii"))
        await self.writer.start_tls(
            self.server.tls_context, ssl_handshake_timeout=self.config.tls_handshake_timeout
        )
        self.tls = True
        self.user = None  # RFC 2595 §4: forget what was said before TLS

    async def cmd_quit(self, argument: str) -> None:
        if argument:
            await self.bad(SYNTAX)
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
                await self.send(UPDATE_FAILED)
                self.outcome = "update failed"
                raise SessionEnd from None
            await self.send(BYE_UPDATED.format(hostname=self.config.hostname, deleted=self.deleted_count))
        else:
            await self.send(BYE.format(hostname=self.config.hostname))
        self.outcome = "quit"
        raise SessionEnd

    # --- TRANSACTION (RFC 1939 §5, §7) ------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        live = [e for n, e in enumerate(self.entries, 1) if n not in self.deleted]
        return len(live), sum(e.size for e in live)

    async def message_number(self, text: str) -> int | None:
        """The number of a message that exists and is not deleted, or None after an -ERR."""
        if not text.isascii() or not text.isdigit():
            await self.bad(INVALID_NUMBER)
            return None
        n = int(text)
        if not 1 <= n <= len(self.entries):
            await self.bad(NO_SUCH_MESSAGE)
            return None
        if n in self.deleted:
            await self.bad(ALREADY_DELETED.format(n=n))
            return None
        return n

    async def cmd_stat(self, argument: str) -> None:
        if argument:
            await self.bad(SYNTAX)
            return
        count, size = self.totals()
        await self.send(f"{OK} {count} {size}")

    async def cmd_list(self, argument: str) -> None:
        await self.scan_listing(argument, lambda n, e: f"{n} {e.size}", "scan listing follows")

    async def cmd_uidl(self, argument: str) -> None:
        await self.scan_listing(argument, lambda n, e: f"{n} {e.uid}", "unique-id listing follows")

    async def scan_listing(self, argument: str, render, title: str) -> None:
        if " " in argument:
            await self.bad(SYNTAX)
            return
        if argument:
            n = await self.message_number(argument)
            if n is not None:
                await self.send(f"{OK} {render(n, self.entries[n - 1])}")
            return
        lines = [render(n, e) for n, e in enumerate(self.entries, 1) if n not in self.deleted]
        count, size = self.totals()
        header = f"{OK} {count} messages ({size} octets)" if title.startswith("scan") else f"{OK} {title}"
        self.writer.write((header + "\r\n" + "".join(f"{line}\r\n" for line in lines) + ".\r\n").encode("ascii"))
        await self.drain()

    async def cmd_retr(self, argument: str) -> None:
        n = await self.message_number(argument)
        if n is not None:
            entry = self.entries[n - 1]
            reply = await self.read_ahead.take(self.entries, n, self.deleted)
            if reply is None:
                await self.stream(entry, BodyEncoder(), f"{OK} {entry.size} octets")
            else:
                # A small message's whole reply (status line, body, terminator) in one write.
                self.writer.write(reply)
                await self.drain_when_full()
            self.retrieved.add(n)

    async def cmd_top(self, argument: str) -> None:
        parts = argument.split()
        if len(parts) != 2:
            await self.bad(SYNTAX)
            return
        count = parts[1]
        if not (count.isascii() and count.isdigit()):
            await self.bad(NEGATIVE_LINES)
            return
        n = await self.message_number(parts[0])
        if n is not None:
            await self.stream(self.entries[n - 1], BodyEncoder(body_lines=int(count)), f"{OK} top of message follows")

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
                    self.writer.write(pending)
                    await self.drain_when_full()
                    pending = encoder.feed(chunk)
            except (TimeoutError, ConnectionError):
                raise
            except OSError as exc:
                # The +OK is out: an error line now would read as message text. Closing tells the client.
                log.error("pop3: reading body %s failed mid-response: %s", entry.body_ref, exc)
                self.outcome = "store error"
                raise SessionEnd from None
        self.writer.write(pending + encoder.finish() + TERMINATOR)
        await self.drain_when_full()

    async def drain_when_full(self) -> None:
        """Wait for the client only above the transport's high-water mark, or to learn it is gone.

        Below the mark drain() would return at once anyway; skipping its timeout wrapper spares a
        task and a timer per reply, which is much of what a small RETR costs.
        """
        transport = self.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            await self.drain()

    async def cmd_dele(self, argument: str) -> None:
        n = await self.message_number(argument)
        if n is not None:
            self.deleted.add(n)
            await self.send(f"{OK} message {n} deleted")

    async def cmd_noop(self, argument: str) -> None:
        if argument:
            await self.bad(SYNTAX)
            return
        await self.send(OK)

    async def cmd_rset(self, argument: str) -> None:
        if argument:
            await self.bad(SYNTAX)
            return
        self.deleted.clear()
        count, size = self.totals()
        await self.send(f"{OK} maildrop has {count} messages ({size} octets)")


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
        self.sessions: set[asyncio.Task] = set()
        self.per_client: collections.Counter[str] = collections.Counter()

    async def start(self, binds: list[tuple[str, int]], tls_binds: list[tuple[str, int]] = ()) -> None:
        for (host, port), implicit_tls in [(b, False) for b in binds] + [(b, True) for b in tls_binds]:
            server = await asyncio.start_server(
                lambda r, w, t=implicit_tls: self.accept(r, w, t),
                host,
                port,
                limit=SASL_LINE_LIMIT,
                ssl=self.tls_context if implicit_tls else None,
                ssl_handshake_timeout=self.config.tls_handshake_timeout if implicit_tls else None,
                reuse_address=True,
            )
            self.listeners.append(server)
            kind = "POP3 with implicit TLS" if implicit_tls else "POP3"
            starttls = ", STLS offered" if self.tls_context is not None and not implicit_tls else ""
            log.info("pop3: %s listening on %s%s", kind, format_address(host, port), starttls)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, implicit_tls: bool) -> None:
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        client = str(peer[0])
        if len(self.sessions) >= self.config.max_connections or (
            self.per_client[client] >= self.config.max_connections_per_client
        ):
            with contextlib.suppress(Exception):
                writer.write((TOO_MANY_CONNECTIONS + "\r\n").encode("ascii"))
                await asyncio.wait_for(writer.drain(), 5)
            writer.close()
            log.info("pop3: refused a connection from %s: too many connections", client)
            return
        task = asyncio.current_task()
        self.sessions.add(task)
        self.per_client[client] += 1
        try:
            await Pop3Session(self, reader, writer, implicit_tls).run()
        finally:
            self.sessions.discard(task)
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]

    async def stop(self) -> None:
        """Stop accepting; give sessions in flight the grace period to QUIT, then close them without UPDATE."""
        for listener in self.listeners:
            listener.close()
        log.info("pop3: stopping; %d sessions in flight", len(self.sessions))
        if self.sessions:
            _, pending = await asyncio.wait(set(self.sessions), timeout=self.config.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
        log.info("pop3: stopped")
