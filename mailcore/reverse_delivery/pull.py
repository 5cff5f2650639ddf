"""The GET client (reverse-delivery.md §4, §5): pull announced bodies back from one origin MX host."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mailcore import tls
from mailcore.reverse_delivery.envelope import GetEnvelope, parse_envelope_lines
from mailcore.reverse_delivery.ids import offers_source
from mailcore.reverse_delivery.origins import OriginHost
from mailcore.store import spool
from mailcore.wire import replies
from mailcore.wire.data import DataOutcome, DataReceiver

log = logging.getLogger("mailcore.reverse_delivery")

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; one octet of slack for a careless
# peer, as for text lines (RFC 5321 §4.5.3.1.6).
LINE_LIMIT = 1001
# A multi-line reply of more lines than this is not an SMTP server talking. The 250 to GET
# carries a TO line per recipient of the transaction (spec §4), and RFC 5321 §4.5.3.1.8 asks a
# server to take at least 100 of them: room for ten times that.
MAX_REPLY_LINES = 1002
# Octets asked of the socket at once, for replies and bodies alike: a body is taken in chunks
# whatever its line lengths (spec §6, "Bounded pulls").
READ_CHUNK = 256 * 1024
# GETs in flight at once: enough to fill a round trip, few enough that neither side's socket
# buffers fill up with commands while the other waits on its replies (RFC 2920 §3.1).
PIPELINE_WINDOW = 32


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return " / ".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    def lists(self, keyword: str) -> bool:
        """True when an EHLO reply lists `keyword` (RFC 5321 §4.1.1.1: one keyword a line)."""
        return self.keyword(keyword) is not None

    def keyword(self, keyword: str) -> str | None:
        """The parameters an EHLO reply lists with `keyword` ("" for none); None if not listed."""
        for line in self.lines[1:]:
            name, _, params = line.partition(" ")
            if name.upper() == keyword:
                return params.strip()
        return None


@dataclass
class Pulled:
    """What one GET gave: a body, a permanent refusal, or nothing yet (`body` and `refusal` both None).

    A body larger than wire.data.PART_SIZE is its first part and its spool (store.spool), open
    while `on_pulled` runs and closed once it has returned.
    """

    source_id: str
    host: OriginHost
    body: bytes | list | None = None
    refusal: str | None = None
    # The envelope in the 250 reply (spec §4); None when the origin sent none (version 1) or a
    # malformed one: either way it cannot match (spec §5.4).
    envelope: GetEnvelope | None = None


@dataclass
class HostReport:
    """The ids this host did not settle (try another host or later) and why."""

    unsettled: list[str] = field(default_factory=list)
    error: str = ""
    usable: bool = False  # the host listed SOURCE and answered at least the EHLO
    rate_limited: str | None = None  # the id the origin answered 421 (too many unknown ids), closing


class ProtocolError(Exception):
    """The origin broke the protocol or a limit; the connection cannot be trusted any further."""


class BodyTooLarge(ProtocolError):
    pass


class LineTooLong(ProtocolError):
    """A reply line past LINE_LIMIT (a body's lines are judged as DATA's are, by DataReceiver)."""


class OriginConnection:
    """One SMTP connection to an origin MX host, used for GETs only."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: OriginHost, timeout: float):
        self.reader = reader
        self.writer = writer
        self.host = host
        self.timeout = timeout
        self.inbox = bytearray()  # what the origin sent that no reply or body has taken yet

    @classmethod
    async def open(cls, host: OriginHost, port: int, timeout: float) -> OriginConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host.address, port, limit=READ_CHUNK), timeout)
        return cls(reader, writer, host, timeout)

    async def _receive(self) -> bytes:
        """The next octets from the origin, as many as have arrived (up to READ_CHUNK)."""
        data = await asyncio.wait_for(self.reader.read(READ_CHUNK), self.timeout)
        if not data:
            raise ConnectionError("connection closed by the origin")
        return data

    async def read_line(self) -> bytes:
        searched = 0
        while (end := self.inbox.find(b"\r\n", searched)) < 0:
            if len(self.inbox) > LINE_LIMIT:
                raise LineTooLong(f"reply line longer than {LINE_LIMIT} octets (RFC 5321 §4.5.3.1.5)")
            searched = max(0, len(self.inbox) - 1)
            self.inbox += await self._receive()
        if end + 2 > LINE_LIMIT:
            raise LineTooLong(f"reply line longer than {LINE_LIMIT} octets (RFC 5321 §4.5.3.1.5)")
        line = bytes(self.inbox[: end + 2])
        del self.inbox[: end + 2]
        return line

    async def read_reply(self) -> Reply:
        lines: list[str] = []
        while len(lines) < MAX_REPLY_LINES:
            raw = await self.read_line()
            text = raw[:-2].decode("utf-8", "replace")
            if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
                raise ProtocolError(f"not an SMTP reply: {text[:80]!r}")
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(int(text[:3]), lines)
        raise ProtocolError("reply of too many lines")

    async def command(self, line: str) -> Reply:
        self.writer.write(line.encode("ascii") + b"\r\n")
        await asyncio.wait_for(self.writer.drain(), self.timeout)
        return await self.read_reply()

    async def greet(self, helo_name: str) -> Reply:
        """Read the banner, EHLO, and STARTTLS (then EHLO again, RFC 3207 §4.2) when offered."""
        banner = await self.read_reply()
        if banner.code != 220:
            raise ProtocolError(f"greeting {banner}")
        ehlo = await self.command(f"EHLO {helo_name}")
        if ehlo.code != 250:
            raise ProtocolError(f"EHLO answered {ehlo}")
        if ehlo.lists("STARTTLS"):
            reply = await self.command("STARTTLS")
            if reply.code == 220:
                self.inbox.clear()  # RFC 3207 §4.2: nothing said before TLS counts after it
                context = tls.opportunistic_client_context()
                await asyncio.wait_for(self.writer.start_tls(context, server_hostname=self.host.name), self.timeout)
                ehlo = await self.command(f"EHLO {helo_name}")
                if ehlo.code != 250:
                    raise ProtocolError(f"EHLO after STARTTLS answered {ehlo}")
            else:
                log.info("origin %s offered STARTTLS but answered %s; continuing without TLS", self.host, reply)
        return ehlo

    async def read_body(self, max_size: int, spool_directory: str | None = None) -> DataOutcome:
        """The message after a 250 to GET, in DATA form (RFC 5321 §4.5.2), read as our DATA reads it.

        The same reader and the same checks as DATA (spec §5.4): the outcome holds the message,
        un-stuffed with its CRLFs, or the reply DATA would have given it (bare CR or LF, NUL, a
        line over 1,000 octets). Raises BodyTooLarge as soon as the octets exceed `max_size`,
        without reading further (spec §5.7). A large body is spooled as it arrives, in
        `spool_directory` (the store's), so what is held is its first part whatever its size.
        """
        receiver = DataReceiver(max_size, abandon_after=max_size, spool_directory=spool_directory)
        try:
            if self.inbox:
                receiver.feed(self.inbox)
                self.inbox.clear()
            while not receiver.done:
                if receiver.too_big:
                    raise BodyTooLarge(f"message exceeds the size limit of {max_size} octets")
                receiver.feed(await self._receive())
        finally:
            if not receiver.done:
                receiver.close()  # its spool too
        # What follows the final dot is the next pipelined reply.
        self.inbox += receiver.leftover
        outcome = receiver.outcome()
        if outcome.problem is replies.DATA_TOO_BIG:
            raise BodyTooLarge(f"message exceeds the size limit of {max_size} octets")
        if outcome.problem is replies.TEMPORARY_FAILURE:  # our disk, not the body: pulled again later
            raise OSError("cannot spool the body here")
        return outcome

    async def quit(self) -> None:
        """QUIT politely, briefly; whatever happens, close."""
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reader.read(READ_CHUNK), min(self.timeout, 2.0))
        except (TimeoutError, OSError) as exc:
            # The origin may already have closed; QUIT is a courtesy (RFC 5321 §4.1.1.10).
            log.debug("QUIT to %s: %s", self.host, exc or type(exc).__name__)
        self.abort()

    def abort(self) -> None:
        self.writer.close()


OnPulled = Callable[[Pulled], Awaitable[None]]


async def pull_from_host(
    host: OriginHost,
    source_ids: list[str],
    on_pulled: OnPulled,
    *,
    port: int,
    helo_name: str,
    timeout: float,
    max_size: int,
    spool_directory: str | None = None,
) -> HostReport:
    """GET `source_ids` over one connection to `host`, GETs pipelined (spec §4).

    A large body is spooled in `spool_directory` (None: the system's temporary directory).

    `on_pulled` is awaited for each id the host settles (a body, or 550/554), before the next
    reply is read, so the caller can make each outcome durable at once. Ids the host did not
    settle (4xx, a dropped connection, a host that does not list SOURCE) come back in the report.
    """
    report = HostReport(unsettled=list(source_ids))
    try:
        connection = await OriginConnection.open(host, port, timeout)
    except (TimeoutError, OSError) as exc:
        report.error = f"cannot connect to {host} port {port}: {str(exc) or type(exc).__name__}"
        return report
    try:
        ehlo = await connection.greet(helo_name)
        if not offers_source(ehlo.keyword("SOURCE")):
            report.error = f"{host} does not list SOURCE 2 in its EHLO reply"
            await connection.quit()
            return report
        report.usable = True
        await _pipelined_gets(connection, report, on_pulled, max_size, spool_directory)
        await connection.quit()
    except BodyTooLarge as exc:
        # Spec §5.7: refused as DATA would be; stop reading and close, the id is failed.
        connection.abort()
        source_id = report.unsettled.pop(0)
        report.error = f"{host}: {exc}"
        await on_pulled(Pulled(source_id, host, refusal=str(exc)))
    except TimeoutError:
        connection.abort()
        report.error = f"{host}: timed out after {timeout:g} s waiting for the origin"
    except (OSError, ProtocolError, ssl.SSLError) as exc:
        connection.abort()
        report.error = f"{host}: {exc}"
    return report


async def _pipelined_gets(
    connection: OriginConnection, report: HostReport, on_pulled: OnPulled, max_size: int, spool_directory: str | None
) -> None:
    """Keep up to PIPELINE_WINDOW GETs in flight; settle replies in order (RFC 2920 §3.2)."""
    pending = list(report.unsettled)
    sent = 0
    temporary: list[str] = []
    try:
        while report.unsettled:
            settled = len(pending) - len(report.unsettled)
            while sent < len(pending) and sent - settled < PIPELINE_WINDOW:
                connection.writer.write(f"GET {pending[sent]}\r\n".encode("ascii"))
                sent += 1
            source_id = report.unsettled[0]
            reply = await connection.read_reply()
            if reply.code == 250:
                # With several GETs in flight the reply must name its id, or we would file a body
                # under the wrong announcement.
                if source_id not in reply.lines[0].split():
                    raise ProtocolError(f"answered GET {source_id} with {reply}")
                envelope = parse_envelope_lines(reply.lines[1:])
                outcome = await connection.read_body(max_size, spool_directory)
                report.unsettled.pop(0)
                if outcome.problem is not None:
                    # Spec §5.4: what DATA would refuse is refused pulled, and the announcement fails.
                    refusal = f"body refused as DATA would refuse it: {outcome.problem}"
                    await on_pulled(Pulled(source_id, connection.host, refusal=refusal, envelope=envelope))
                else:
                    await on_pulled(Pulled(source_id, connection.host, body=outcome.content, envelope=envelope))
                    # Stored or refused: read no more. (Were this cancelled while a worker thread
                    # still reads it, the spool closes with its last reference.)
                    spool.release(outcome.content)
            elif reply.code in (550, 554, 501):
                # 550: never sourced there, or expired; 554: the origin refuses us; 501: it says the
                # id is malformed. All permanent (spec §4): the announcement is a forgery attempt.
                report.unsettled.pop(0)
                await on_pulled(Pulled(source_id, connection.host, refusal=f"{connection.host} answered GET with {reply}"))
            elif reply.code == 421:
                # The origin is closing the connection (spec §4, too many unknown ids); the rest wait.
                report.error = f"{connection.host} answered GET with {reply}"
                report.rate_limited = source_id
                return
            else:
                # 451 and anything unexpected: temporary for this id; the connection is still good.
                temporary.append(report.unsettled.pop(0))
                report.error = f"{connection.host} answered GET {source_id} with {reply}"
    finally:
        report.unsettled.extend(temporary)
