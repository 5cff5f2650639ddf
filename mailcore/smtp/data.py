"""The DATA form of a message (RFC 5321 §4.5.2): reading it in chunks, and writing it for GET.

Both directions work on whole chunks with bytes methods that run in C (find, count, replace),
never a Python step or object per line, so the cost stays linear in the size of the message
whatever the shape of its lines, and what is held per session is the message itself and one
incomplete line.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailcore.smtp import replies
from mailcore.smtp.replies import Reply

END_OF_DATA = b"\r\n.\r\n"
# RFC 5321 §4.5.3.1.6: 1000 octets per line including the CRLF.
MAX_LINE_OCTETS = 998


@dataclass
class DataOutcome:
    # The message, dots unstuffed; in parts of about PART_SIZE octets when it is larger than that
    # (the store writes the parts as they are); None when refused.
    content: bytes | list[bytes] | None
    problem: Reply | None
    received: int  # octets read off the wire for this message

    def joined(self) -> bytes | None:
        """The message as one bytes object, for a reader that takes no parts."""
        return b"".join(self.content) if isinstance(self.content, list) else self.content


# A message larger than this is kept as a list of parts of about this size, not one bytes object.
PART_SIZE = 1024 * 1024


class DataReceiver:
    """Fed the octets that follow `354`; says when the terminating `CRLF . CRLF` has arrived.

    Each chunk is taken up to its last complete line as it arrives: the lines are checked (NUL,
    bare CR or LF, length) and unstuffed there, so that what is held is the message itself
    (once, in parts) and the last incomplete line. A message that is refused or past `max_size` is no longer kept at all (only enough
    to find the end); past `abandon_after` it gives up waiting for the end.
    """

    def __init__(self, max_size: int, abandon_after: int | None = None):
        # From the last line end on, starting with a virtual CRLF: the DATA command's own line
        # end, so that "." on the very first line ends the message and a leading "." is
        # unstuffed like any other.
        self._tail = b"\r\n"
        self.max_size = max_size
        self.abandon_after = abandon_after if abandon_after is not None else 2 * max_size + 1024 * 1024
        self.received = 0
        self.too_big = False
        self.problem: Reply | None = None
        self.done = False
        self.abandoned = False
        self.leftover = b""
        self._parts: list[bytes] = []
        self._current = bytearray()

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk; True once the end of the data has been seen."""
        data = self._tail + chunk
        self.received += len(chunk)
        end = data.find(END_OF_DATA)  # the tail holds less than END_OF_DATA of a line: found across chunks
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
            self._drop()
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
        if b"\r\n." in segment:
            segment = segment.replace(b"\r\n.", b"\r\n")
        current = self._current
        current += memoryview(segment)[2:]
        current += b"\r\n"
        if len(current) >= PART_SIZE:
            self._parts.append(bytes(current))
            self._current = bytearray()

    def _refuse(self, problem: Reply) -> None:
        if self.problem is None:
            self.problem = problem
        self._drop()

    def _drop(self) -> None:
        self._parts = []
        self._current = bytearray()

    def held(self) -> int:
        """Octets held for this message: the content so far and the incomplete line."""
        return len(self._tail) + len(self._current) + sum(map(len, self._parts))

    def outcome(self) -> DataOutcome:
        if self.too_big or self.received > self.max_size:
            return DataOutcome(None, replies.DATA_TOO_BIG, self.received)
        if self.problem is not None:
            return DataOutcome(None, self.problem, self.received)
        last = bytes(self._current)
        content = [*self._parts, last] if self._parts else last
        self._drop()
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
