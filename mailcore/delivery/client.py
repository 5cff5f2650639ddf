"""The SMTP client that hands queued messages to other servers' MX hosts (RFC 5321, 3207, 2920, 1870, 6152, 6531).

One connection per host carries every message due for that destination; each recipient gets its own
result. The body leaves through one seam, `OutboundClient.transfer()`, which sends DATA; the reverse
delivery issue overrides it to announce the message with SOURCE when the peer's EHLO lists it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass, field

from mailcore import tls
from mailcore.delivery.mx import MailHost
from mailcore.wire.transparency import dot_stuff

log = logging.getLogger("mailcore.delivery")

_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*?)\r?\n?$", re.S)
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
MAX_REPLY_LINES = 100


@dataclass(frozen=True)
class Reply:
    """One SMTP reply, possibly multi-line (RFC 5321 §4.2)."""

    code: int
    lines: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 status code of the reply, or one derived from the basic code."""
        match = _ENHANCED.match(self.lines[0] if self.lines else "")
        if match:
            return ".".join(match.groups())
        return {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(self.code // 100, "4.0.0")

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class SMTPFailure(Exception):
    """A session that cannot go on: refused, timed out, closed, or a peer talking garbage. Always temporary."""


@dataclass
class OutboundMessage:
    """One message to one destination: the envelope and the exact octets to send after DATA."""

    queue_id: str
    mail_from: str
    recipients: list[str]
    content: bytes
    message_id: int | None = None  # the stored Message, for a transfer that must refer to it (SOURCE)
    # False: we cannot vouch for its origin, so it goes by DATA (reverse-delivery.md §6, Forwarding).
    may_source: bool = True

    @property
    def eight_bit(self) -> bool:
        return any(b > 127 for b in self.content)

    @property
    def needs_smtputf8(self) -> bool:
        """RFC 6531 §3.2: non-ASCII addresses or header fields need SMTPUTF8."""
        if not all(a.isascii() for a in [self.mail_from, *self.recipients]):
            return True
        head = self.content.split(b"\r\n\r\n", 1)[0]
        return any(b > 127 for b in head)


@dataclass
class RecipientResult:
    """What became of one recipient at one attempt."""

    recipient: str
    reply: str  # the remote reply or our own reason, for mailq and the DSN
    status: str  # RFC 3463 enhanced status code
    delivered: bool = False
    permanent: bool = False
    how: str = "sent"  # "sent" (DATA) or "sourced" (SOURCE, reverse delivery)
    remote_host: str = ""

    @property
    def temporary(self) -> bool:
        return not (self.delivered or self.permanent)


@dataclass
class Session:
    """What we know about the server at the other end of one connection."""

    host: MailHost
    address: str
    greeting: Reply | None = None
    esmtp: bool = False
    extensions: dict[str, str] = field(default_factory=dict)
    tls: bool = False

    @property
    def remote_host(self) -> str:
        return f"{self.host.name}[{self.address}]"

    def offers(self, keyword: str) -> bool:
        return keyword.upper() in self.extensions


class Connection:
    """One TCP connection speaking SMTP lines, with a timeout on every read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def open(cls, address: str, port: int, connect_timeout: float, timeout: float, source_address: str | None = None) -> Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port, local_addr=(source_address, 0) if source_address else None),
                connect_timeout,
            )
        except TimeoutError:
            raise SMTPFailure(f"connection to {address} port {port} timed out") from None
        except OSError as exc:
            raise SMTPFailure(f"connection to {address} port {port} failed: {exc.strerror or exc}") from None
        return cls(reader, writer, timeout)

    async def read_reply(self, what: str) -> Reply:
        code = None
        lines: list[str] = []
        while True:
            try:
                raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except TimeoutError:
                raise SMTPFailure(f"timeout waiting for the reply to {what}") from None
            except (asyncio.LimitOverrunError, ValueError):
                raise SMTPFailure(f"protocol error: overlong reply line to {what}") from None
            except OSError as exc:
                raise SMTPFailure(f"connection lost waiting for the reply to {what}: {exc}") from None
            if not raw:
                raise SMTPFailure(f"connection closed by the server waiting for the reply to {what}")
            match = _REPLY_LINE.match(raw)
            if not match or (code is not None and int(match.group(1)) != code):
                shown = raw[:80].decode("ascii", "backslashreplace").strip()
                raise SMTPFailure(f"protocol error: garbage in the reply to {what}: {shown!r}")
            code = int(match.group(1))
            lines.append(match.group(3).decode("utf-8", "replace").strip())
            if match.group(2) == b" ":
                return Reply(code, tuple(lines))
            if len(lines) > MAX_REPLY_LINES:
                raise SMTPFailure(f"protocol error: endless reply to {what}")

    async def send(self, data: bytes, what: str) -> None:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except TimeoutError:
            raise SMTPFailure(f"timeout sending {what}") from None
        except OSError as exc:
            raise SMTPFailure(f"connection lost sending {what}: {exc}") from None

    async def command(self, line: str, utf8: bool = False) -> Reply:
        verb = line.split(" ", 1)[0]
        await self.send(line.encode("utf-8" if utf8 else "ascii") + b"\r\n", verb)
        return await self.read_reply(verb)

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        try:
            await asyncio.wait_for(self.writer.start_tls(context, server_hostname=server_hostname), self.timeout)
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            raise SMTPFailure(f"TLS handshake failed: {exc}") from None

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (TimeoutError, OSError, ssl.SSLError):
            pass


class OutboundClient:
    """Delivers messages for one destination to its hosts in order, one connection per host."""

    def __init__(
        self,
        helo_name: str,
        port: int,
        *,
        connect_timeout: float = 30.0,
        timeout: float = 120.0,
        tls_context: ssl.SSLContext | None = None,
        source_address: str | None = None,
    ):
        self.helo_name = helo_name
        self.port = port
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.tls_context = tls_context or tls.opportunistic_client_context()
        self.source_address = source_address

    async def deliver(self, hosts: list[MailHost], messages: list[OutboundMessage]) -> dict[str, list[RecipientResult]]:
        """Results per queue id, one per recipient; whatever no host decided is a temporary failure."""
        results: dict[str, list[RecipientResult]] = {}
        pending = list(messages)
        reason = "no host to try"
        for host in hosts:
            for address in host.addresses:
                if not pending:
                    return results
                pending, reason = await self._deliver_to(host, address, pending, results)
        for message in pending:
            results[message.queue_id] = [
                RecipientResult(rcpt, reason, "4.4.1" if "connect" in reason else "4.4.2") for rcpt in message.recipients
            ]
        return results

    async def _deliver_to(self, host, address, messages, results, use_tls=True):
        """Deliver what it can over one connection; returns (messages still undecided, why)."""
        session = Session(host=host, address=address)
        try:
            conn = await Connection.open(address, self.port, self.connect_timeout, self.timeout, self.source_address)
        except SMTPFailure as exc:
            log.info("delivery to %s: %s", session.remote_host, exc)
            return messages, str(exc)
        remaining = list(messages)
        try:
            try:
                await self.greet(conn, session, use_tls)
            except _TLSFailed as exc:
                # A peer that offers STARTTLS and then fails the handshake: once more in the clear, as Postfix does.
                await conn.close()
                log.info("delivery to %s: %s; retrying without TLS", session.remote_host, exc)
                if use_tls:
                    return await self._deliver_to(host, address, messages, results, use_tls=False)
                return messages, str(exc)
            while remaining:
                message = remaining[0]
                results[message.queue_id] = await self.transaction(conn, session, message)
                remaining.pop(0)
            await self._quit(conn)
            return [], ""
        except _HostRefused as exc:
            log.info("delivery to %s: %s", session.remote_host, exc)
            await self._quit(conn)
            return remaining, f"{session.remote_host}: {exc}"
        except SMTPFailure as exc:
            log.info("delivery to %s: %s", session.remote_host, exc)
            return remaining, f"{session.remote_host}: {exc}"
        finally:
            await conn.close()

    async def greet(self, conn: Connection, session: Session, use_tls: bool = True) -> None:
        """Greeting, EHLO (HELO when refused) and opportunistic STARTTLS (RFC 3207)."""
        session.greeting = await conn.read_reply("the greeting")
        if session.greeting.code != 220:
            # RFC 5321 §3.1: a 554 or 421 greeting means no service here; the next MX may serve.
            raise _HostRefused(f"greeting {session.greeting}")
        await self.ehlo(conn, session)
        if use_tls and session.offers("STARTTLS") and not session.tls:
            reply = await conn.command("STARTTLS")
            if reply.code == 220:
                try:
                    await conn.starttls(self.tls_context, session.host.name)
                except SMTPFailure as exc:
                    raise _TLSFailed(str(exc)) from None
                session.tls = True
                # RFC 3207 §4.2: forget what we learnt before TLS and say EHLO again.
                await self.ehlo(conn, session)

    async def ehlo(self, conn: Connection, session: Session) -> None:
        reply = await conn.command(f"EHLO {self.helo_name}")
        if reply.code == 250:
            session.esmtp = True
            session.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, param = line.partition(" ")
                session.extensions[keyword.upper()] = param.strip()
            return
        if reply.code < 500:
            raise _HostRefused(f"EHLO: {reply}")
        # RFC 5321 §3.2: a server that does not know EHLO gets HELO.
        reply = await conn.command(f"HELO {self.helo_name}")
        if reply.code != 250:
            raise _HostRefused(f"HELO: {reply}")
        session.esmtp = False
        session.extensions = {}

    async def transaction(self, conn: Connection, session: Session, message: OutboundMessage) -> list[RecipientResult]:
        """MAIL, RCPT for each recipient, then `transfer`; a result for every recipient."""
        remote = session.remote_host

        def everyone(reply_text: str, status: str, permanent: bool, rcpts=message.recipients) -> list[RecipientResult]:
            return [RecipientResult(r, reply_text, status, permanent=permanent, remote_host=remote) for r in rcpts]

        size = len(message.content)
        limit = session.extensions.get("SIZE", "")
        if limit.isdigit() and int(limit) > 0 and size > int(limit):
            # RFC 1870 §6: do not send what the server said it would refuse.
            return everyone(f"message of {size} octets exceeds the {limit} octets that {remote} accepts (RFC 1870)", "5.3.4", True)
        utf8 = message.needs_smtputf8
        if utf8 and not session.offers("SMTPUTF8"):
            return everyone(
                f"the message needs SMTPUTF8 (non-ASCII addresses or headers) and {remote} does not offer it (RFC 6531)",
                "5.6.7",
                True,
            )

        params = []
        if session.offers("SIZE"):
            params.append(f"SIZE={size}")
        if message.eight_bit and session.offers("8BITMIME"):
            params.append("BODY=8BITMIME")
        if utf8:
            params.append("SMTPUTF8")
        mail_cmd = f"MAIL FROM:<{message.mail_from}>" + "".join(f" {p}" for p in params)
        rcpt_cmds = [f"RCPT TO:<{r}>" for r in message.recipients]

        if session.offers("PIPELINING"):
            # RFC 2920 §3.1: MAIL and the RCPTs go in one group; their replies come back in order.
            batch = "".join(c + "\r\n" for c in [mail_cmd, *rcpt_cmds]).encode("utf-8" if utf8 else "ascii")
            await conn.send(batch, "MAIL and RCPT")
            mail_reply = await conn.read_reply("MAIL")
            rcpt_replies = [await conn.read_reply("RCPT") for _ in rcpt_cmds]
        else:
            mail_reply = await conn.command(mail_cmd, utf8)
            rcpt_replies = []
            if mail_reply.code == 250:
                rcpt_replies = [await conn.command(c, utf8) for c in rcpt_cmds]

        if mail_reply.code != 250:
            await self._reset(conn)
            return everyone(f"MAIL FROM: {mail_reply}", mail_reply.enhanced, mail_reply.permanent)

        results: dict[str, RecipientResult] = {}
        accepted = []
        for rcpt, reply in zip(message.recipients, rcpt_replies, strict=False):
            if reply.code in (250, 251):
                accepted.append(rcpt)
            else:
                results[rcpt] = RecipientResult(rcpt, f"RCPT TO: {reply}", reply.enhanced, permanent=reply.permanent, remote_host=remote)
        if not accepted:
            await self._reset(conn)
            return [results[r] for r in message.recipients]

        reply, how = await self.transfer(conn, session, message, accepted)
        for rcpt in accepted:
            results[rcpt] = RecipientResult(
                rcpt, str(reply), reply.enhanced, delivered=reply.code == 250, permanent=reply.permanent, how=how, remote_host=remote
            )
        log.info(
            "%s to %s: %s (%d of %d recipients accepted)", message.queue_id, remote, reply, len(accepted), len(message.recipients)
        )
        return [results[r] for r in message.recipients]

    async def transfer(self, conn: Connection, session: Session, message: OutboundMessage, accepted: list[str]) -> tuple[Reply, str]:
        """THE SEAM where the body leaves: DATA here; SOURCE when the reverse-delivery client overrides it.

        Returns the final reply for the accepted recipients and how they were handed over ("sent").
        """
        return await self.send_data(conn, message), "sent"

    async def send_data(self, conn: Connection, message: OutboundMessage) -> Reply:
        reply = await conn.command("DATA")
        if reply.code != 354:
            if reply.code < 400:  # a 250 to DATA is a protocol error; nothing was sent
                raise SMTPFailure(f"protocol error: DATA answered {reply}")
            await self._reset(conn)
            return reply
        await conn.send(dot_stuff(message.content), "the message")
        return await conn.read_reply("end of data")

    async def _reset(self, conn: Connection) -> None:
        reply = await conn.command("RSET")
        if reply.code != 250:
            raise SMTPFailure(f"RSET answered {reply}")

    async def _quit(self, conn: Connection) -> None:
        try:
            await conn.command("QUIT")
        except SMTPFailure:
            pass  # the messages are decided; a peer that drops QUIT changes nothing


class _HostRefused(SMTPFailure):
    """The host will not serve us now (greeting or EHLO refused); the next host may."""


class _TLSFailed(SMTPFailure):
    """STARTTLS was offered but the handshake failed."""
