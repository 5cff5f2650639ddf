"""The DATA form of a message (RFC 5321 §4.5.2): reading it in chunks, and writing it for GET.

Both directions work on whole chunks with bytes methods that run in C (find, count, replace),
never a Python step or object per line, so the cost stays linear in the size of the message
whatever the shape of its lines. What is held in memory per session is bounded: the first
PART_SIZE octets of the message and one chunk; the rest goes to a spool file as it arrives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mailcore.store.spool import SpoolFile
from mailcore.wire import replies
from mailcore.wire.replies import Reply

log = logging.getLogger("mailcore.smtp")

END_OF_DATA = b"\r\n.\r\n"
# RFC 5321 §4.5.3.1.6: 1000 octets per line including the CRLF.
MAX_LINE_OCTETS = 998
# What of a message is held in memory: a message up to this size whole, a larger one's first
# part of at least this size (its header block must end within it: replies.HEADER_TOO_BIG).
PART_SIZE = 1024 * 1024


@dataclass
class DataOutcome:
    # The message, dots unstuffed; None when refused. Larger than PART_SIZE, it is a list
    # [first part, SpoolFile with the rest] (store.spool), which the store copies as it is.
    # Whoever takes it closes the spool (store.spool.release) once nothing reads it any more.
    content: bytes | list | None
    problem: Reply | None
    received: int  # octets read off the wire for this message


class DataReceiver:
    """Fed the octets that follow `354`; says when the terminating `CRLF . CRLF` has arrived.

    Each chunk is taken up to its last complete line as it arrives: the lines are checked (NUL,
    bare CR or LF, length) and unstuffed there. The first PART_SIZE octets are kept in memory;
    past them every chunk is appended to a spool file (`spool_directory`: the store's, see
    store.spool) as it is checked, so what is held is that first part and the last incomplete
    line, whatever the size of the message. A message that is refused or past `max_size` is no
    longer kept at all (its spool is closed; only enough is held to find the end); past
    `abandon_after` it gives up waiting for the end. `close` frees whatever is still kept.
    """

    def __init__(self, max_size: int, abandon_after: int | None = None, spool_directory: str | None = None):
        # From the last line end on, starting with a virtual CRLF: the DATA command's own line
        # end, so that "." on the very first line ends the message and a leading "." is
        # unstuffed like any other.
        self._tail = b"\r\n"
        self.max_size = max_size
        self.abandon_after = abandon_after if abandon_after is not None else 2 * max_size + 1024 * 1024
        self.spool_directory = spool_directory
        self.received = 0
        self.too_big = False
        self.problem: Reply | None = None
        self.done = False
        self.abandoned = False
        self.leftover = b""
        self._current = bytearray()  # the message so far, until it reaches PART_SIZE
        self._head: bytes | None = None  # the first part, once the message is past PART_SIZE
        self._spool: SpoolFile | None = None  # the rest

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk; True once the end of the data has been seen."""
        data = self._tail + chunk
        self.received += len(chunk)
        # The tail holds less than END_OF_DATA of a line: the end is found across chunks. A chunk
        # without a dot (memchr) has neither the end nor a line to unstuff: the searches for
        # them, which cost most on dense line ends, are spared.
        end = data.find(END_OF_DATA) if b"." in data else -1
        if end >= 0:
            self.done = True
            self.leftover = data[end + len(END_OF_DATA):]
            self.received -= len(self.leftover) + 3
            if end > 0:
                self._take(data[:end])
            self._tail = b""
            return True
        if self.received > self.max_size and not self.too_big:
            # RFC 5321 §4.5.3.1.10: refuse after the end, but keep nothing meanwhile.
            self.too_big = True
            self.close()
        if self.received > self.abandon_after:
            self.abandoned = True
        last = data.rfind(b"\r\n")
        if last > 0:
            self._take(data[:last])
            data = data[last:]
        # The CRLF before it, a stuffed dot, 998 octets (RFC 5321 §4.5.3.1.6): longer is refused.
        if len(data) > 2 + 1 + MAX_LINE_OCTETS:
            self._refuse(replies.DATA_LINE_TOO_LONG)
        self._tail = data if self.problem is None and not self.too_big else data[-(len(END_OF_DATA) - 1):]
        return False

    def _take(self, segment: bytes) -> None:
        """Check and keep complete lines: `segment` is CRLF line CRLF line ... (without the last CRLF)."""
        if self.problem is not None or self.too_big:
            return
        if b"\x00" in segment:
            self._refuse(replies.DATA_NUL)
            return
        # Counts and a search per block of the line limit, all in C: a chunk of many short lines
        # costs what the same octets in long lines cost (reverse-delivery.md §6, "Bounded pulls").
        line_ends = segment.count(b"\r\n")
        if segment.count(b"\n") != line_ends or segment.count(b"\r") != line_ends:
            # Refused rather than repaired: a receiver that reads them as line ends where another
            # does not is how SMTP smuggling works.
            self._refuse(replies.DATA_BARE_LF)
            return
        if has_long_line(segment):
            self._refuse(replies.DATA_LINE_TOO_LONG)
            return
        # RFC 5321 §4.5.2: the first "." of every line that starts with one is removed.
        if b"." in segment and b"\r\n." in segment:
            segment = segment.replace(b"\r\n.", b"\r\n")
        lines = memoryview(segment)[2:]
        if self._head is not None:
            try:
                if self._spool is None:
                    self._spool = SpoolFile(self.spool_directory)
                self._spool.append(lines, b"\r\n")
            except OSError as exc:  # a full disk, say: refused as temporary once the data has ended
                log.warning("cannot spool a message: %s", exc)
                self._refuse(replies.TEMPORARY_FAILURE)
            return
        current = self._current
        current += lines
        current += b"\r\n"
        if len(current) >= PART_SIZE:
            head = bytes(current)
            self._current = bytearray()
            if not head.startswith(b"\r\n") and head.find(b"\r\n\r\n", 0, PART_SIZE + 2) < 0:
                self._refuse(replies.HEADER_TOO_BIG)
                return
            self._head = head

    def _refuse(self, problem: Reply) -> None:
        if self.problem is None:
            self.problem = problem
        self.close()

    def close(self) -> None:
        """Drop what is kept of the message, its spool included (idempotent)."""
        self._current = bytearray()
        self._head = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def held(self) -> int:
        """Octets held in memory for this message: the content so far and the incomplete line."""
        return len(self._tail) + len(self._current) + len(self._head or b"")

    def spooled(self) -> int:
        """Octets of this message written to its spool so far."""
        return len(self._spool) if self._spool is not None else 0

    def outcome(self) -> DataOutcome:
        """The message or the problem; the message's spool passes to the caller with it."""
        if self.too_big or self.received > self.max_size:
            self.close()
            return DataOutcome(None, replies.DATA_TOO_BIG, self.received)
        if self.problem is not None:
            return DataOutcome(None, self.problem, self.received)
        content: bytes | list
        if self._head is None:
            content = bytes(self._current)
        elif self._spool is None:
            content = self._head
        else:
            content = [self._head, self._spool]
        self._current, self._head, self._spool = bytearray(), None, None
        return DataOutcome(content, None, self.received)


# A line over MAX_LINE_OCTETS is a run of at least MAX_LINE_OCTETS + 1 octets without a LF (its
# CR included), and any run of 2 * B - 1 octets holds a whole one of the consecutive blocks of B
# octets: so one LF search per block finds every candidate, however short or long the lines are.
_LINE_BLOCK = (MAX_LINE_OCTETS + 2) // 2


def has_long_line(raw: bytes, limit: int = MAX_LINE_OCTETS) -> bool:
    """Whether a line of `raw` (CRLF lines, dot-stuffed) is over `limit` octets.

    RFC 5321 §4.5.3.1.6, counted without its CRLF and without the dot that stuffing adds on the
    wire (a line one octet over may be a stuffed one).
    """
    find, size, start = raw.find, len(raw), 0
    while start + _LINE_BLOCK <= size:
        if find(b"\n", start, start + _LINE_BLOCK) >= 0:
            start += _LINE_BLOCK
            continue
        line_start = raw.rfind(b"\n", 0, start) + 1
        line_end = find(b"\n", start + _LINE_BLOCK)
        if line_end < 0:
            line_end = size
        length = line_end - line_start - (raw[line_end - 1] == 0x0D) - (raw[line_start] == 0x2E)
        if length > limit:
            return True
        start = line_end + 1
    return False
