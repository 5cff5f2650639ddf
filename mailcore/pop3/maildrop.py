"""What the POP3 protocol needs from storage, and its one boundary into the services (a
database_bridge.DatabaseBridge; the one call made on the event loop, a read from the page
cache, never waits for the disk)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from mailcore.database_bridge import DatabaseBridge
from mailcore.services import maildrop as service
from mailcore.services.accounts import LoginBlocked
from mailcore.services.login_failures import LoginFailures
from mailcore.services.maildrop import Account, LockLost, MaildropEntry
from mailcore.wire.pop3 import retr_reply
from mailcore.wire.transparency import TERMINATOR

log = logging.getLogger("mailcore.pop3")

__all__ = ["Account", "LockLost", "LoginBlocked", "Maildrop", "MaildropEntry", "ReadAhead", "ServiceMaildrop"]


class Maildrop(Protocol):
    """The storage side of a POP3 session; the protocol holds one and never a database handle."""

    async def authenticate(self, address: str, password: str, client: str) -> Account | None:
        """The account, or None; raises LoginBlocked when `client` reached the failed-login limit
        (the attempt is counted before the password is checked, and given back on success)."""

    async def login_blocked(self, client: str) -> bool: ...

    async def record_login_failure(self, client: str) -> None: ...

    async def lock(self, account: Account, holder: str) -> bool: ...

    async def refresh(self, account: Account, holder: str) -> bool: ...

    async def unlock(self, account: Account, holder: str) -> None: ...

    async def listing(self, account: Account) -> list[MaildropEntry]: ...

    def body(self, entry: MaildropEntry) -> AsyncIterator[bytes]: ...

    def cached_reply(self, entry: MaildropEntry) -> bytes | None: ...

    async def replies(self, entries: list[MaildropEntry], asked: bool = True) -> list[bytes | None]: ...

    async def update(self, account: Account, holder: str, deleted: list[int], retrieved: list[int]) -> int: ...


# The event loop's pool of threads: the password hasher and body reads run in parallel, so one
# slow login or a large RETR does not queue every other session behind it on a single thread.
_off_loop = DatabaseBridge().run


_EXHAUSTED = object()
DOT = ord(".")

# What RETR reads in one go (memory per session in flight stays within a few times this); a
# larger body is streamed in the store's chunks.
WHOLE_READ = 256 * 1024


def _retr_replies(entries: list[MaildropEntry], asked: bool) -> list[bytes | None]:
    # Read and encoded here, in the worker, while the event loop serves other commands.
    replies: list[bytes | None] = []
    for entry in entries:
        try:
            replies.append(_retr_reply(entry, wait=True))
        except Exception as exc:  # any storage backend's error
            if asked and not replies:
                raise
            # Read ahead: its own RETR reads it again, and answers.
            log.debug("pop3: read-ahead of body %s failed: %s", entry.body_ref, exc)
            replies.append(None)
    return replies


def _retr_reply(entry: MaildropEntry, *, wait: bool) -> bytes | bytearray | None:
    """RETR's whole reply to a small message: status line, body, terminator.

    The body is read straight into the reply; one in wire form (as long as its size as sent:
    every LF is in a CRLF) with no line that starts with a dot to stuff (RFC 1939 §3) is then
    complete without a copy. Without `wait` (on the event loop), None when the body is not all
    in the page cache.
    """
    size = entry.size
    status = b"+OK %d octets\r\n" % size
    start, end = len(status), len(status) + size
    reply = bytearray(end + len(TERMINATOR))
    read = service.body_into(entry.body_ref, memoryview(reply)[start : end + 1], wait=wait)
    if read is None:
        # No local file (or not without waiting), or not the body that was listed.
        return retr_reply(service.read_body(entry.body_ref), size) if wait else None
    if read == size and reply.find(b"\n.", start, end) < 0 and reply[start] != DOT:
        reply[:start] = status
        reply[end:] = TERMINATOR
        return reply
    return retr_reply(bytes(reply[start : start + read]), size)


def _next_chunk(chunks):
    return next(chunks, _EXHAUSTED)


class ServiceMaildrop:
    """The Maildrop over `mailcore.services.maildrop`: every call runs off the event loop."""

    def __init__(self, lock_ttl: float, failures: LoginFailures):
        self.lock_ttl = lock_ttl
        self.failures = failures

    async def authenticate(self, address: str, password: str, client: str) -> Account | None:
        return await _off_loop(service.authenticate, address, password, client, self.failures)

    async def login_blocked(self, client: str) -> bool:
        """Whether `client` reached the failed-login limit, counted across processes and nodes."""
        return await _off_loop(self.failures.blocked, client)

    async def record_login_failure(self, client: str) -> None:
        await _off_loop(self.failures.record, client)

    async def lock(self, account: Account, holder: str) -> bool:
        return await _off_loop(service.acquire_lock, account.mailbox_id, holder, self.lock_ttl)

    async def refresh(self, account: Account, holder: str) -> bool:
        return await _off_loop(service.refresh_lock, account.mailbox_id, holder, self.lock_ttl)

    async def unlock(self, account: Account, holder: str) -> None:
        await _off_loop(service.release_lock, account.mailbox_id, holder)

    async def listing(self, account: Account) -> list[MaildropEntry]:
        return await _off_loop(service.listing, account.mailbox_id)

    async def body(self, entry: MaildropEntry) -> AsyncIterator[bytes]:
        # One trip to a worker thread opens, reads and closes a body up to WHOLE_READ octets;
        # only a larger one goes on in chunks, one trip each, with the file held open.
        first, rest = await _off_loop(service.body_start, entry.body_ref, WHOLE_READ)
        if rest is None:
            yield first
            return
        try:
            yield first
            while (chunk := await _off_loop(_next_chunk, rest)) is not _EXHAUSTED:
                yield chunk
        finally:
            await _off_loop(rest.close)  # closes the file even when the client vanished mid-RETR

    def cached_reply(self, entry: MaildropEntry) -> bytes | bytearray | None:
        """RETR's whole reply when the page cache holds the body, on the event loop without waiting
        for the disk; None says to read it with `replies` in a worker thread."""
        return _retr_reply(entry, wait=False)

    async def replies(self, entries: list[MaildropEntry], asked: bool = True) -> list[bytes | None]:
        """Whole RETR replies of small messages, read and encoded in one trip to a worker thread.

        With `asked`, the first is the message the client asked for, and failing to read it
        raises; any other body that cannot be read comes back as None (its own RETR tries again).
        """
        return await _off_loop(_retr_replies, entries, asked)

    async def update(self, account: Account, holder: str, deleted: list[int], retrieved: list[int]) -> int:
        return await _off_loop(service.commit_update, account.mailbox_id, holder, deleted, retrieved)


# RETR's read-ahead: at most this many octets of bodies held or being read per session, and at
# most this many bodies read in one trip to a worker thread.
READ_AHEAD_OCTETS = 256 * 1024
READ_AHEAD_COUNT = 64

# Reads ahead still running when their session ended: the loop keeps only weak references to tasks.
_READS_IN_FLIGHT: set[asyncio.Task] = set()


def _read_done(task: asyncio.Task) -> None:
    _READS_IN_FLIGHT.discard(task)
    # A batch read ahead returns None for what it cannot read; anything raised is unexpected,
    # and nobody may await a batch its session dropped, so it is logged here.
    if not task.cancelled() and task.exception() is not None:
        log.warning("pop3: reading ahead failed: %s", task.exception())


class ReadAhead:
    """RETR replies of small messages a session is likely to ask for next.

    Mail clients retrieve in order, one RETR at a time (RFC 1939 has no bulk retrieval), and a
    trip to a worker thread costs more than sending a 10 KB body. So a body in the page cache
    is read on the event loop, without waiting for the disk (`Maildrop.cached_reply`), and the
    reply to the next message is built right after each one is sent, while the client reads it.
    Only bodies the cache does not hold go to workers: one body evicted here and there is read
    alone, ahead of its RETR; a mailbox cold throughout is read ahead like a file system does,
    the window starting at one message and doubling each time the client goes on with the
    message after the last one, up to READ_AHEAD_COUNT bodies, the next batch read in the
    background once half of what was read is sent, until the cache holds the bodies again. Any
    other request starts again at one message. Bodies are immutable once stored and the session
    holds the maildrop's lock (RFC 1939 §8), so a body read ahead is the body.
    """

    # Every POP3 session has one, idle ones too.
    __slots__ = ("cold", "expected", "held", "maildrop", "reading", "reading_numbers", "window")

    def __init__(self, maildrop: Maildrop):
        self.maildrop = maildrop
        self.held: dict[int, bytes] = {}  # message number: its whole RETR reply
        self.window = 1
        self.expected = 0  # the message number that would continue the client's run
        self.reading: asyncio.Task | None = None  # the next batch, read in the background
        self.reading_numbers: list[int] = []
        self.cold = False  # the last body asked for was not in the page cache

    def ready(self, entries: list[MaildropEntry], n: int, skip: set[int]) -> bytes | None:
        """The whole RETR reply for message `n` without waiting: held, or read from the page cache.

        None means ask `take`, which goes to a worker thread. Arguments as for `take`.
        """
        reply = self.held.pop(n, None)
        if reply is None:
            entry = entries[n - 1]
            # A body in the page cache costs less to read here than a trip to a thread; only
            # bodies that were not (cold mail) are read ahead, in batches, by workers.
            reply = self.maildrop.cached_reply(entry) if entry.size <= WHOLE_READ else None
            if reply is None:
                return None
            self.cold = False
        if self.cold:
            if n == self.expected:
                self.read_on(entries, n, skip)
        else:
            self.prepare_next(entries, n + 1, skip)
        self.expected = n + 1
        return reply

    def prepare_next(self, entries: list[MaildropEntry], n: int, skip: set[int]) -> None:
        """Build the reply to the next RETR once this one is sent, while the client reads it.

        It runs right after this command's write, before the loop waits again: the client is
        busy with the reply it got, so the next one is ready when it asks (one body, from the
        page cache, at most READ_AHEAD_OCTETS / 2: little lost if the client asks for another).
        """
        while n in skip:
            n += 1
        if n <= len(entries) and n not in self.held and entries[n - 1].size <= READ_AHEAD_OCTETS // 2:
            asyncio.get_running_loop().call_soon(self.prepare, entries, n, skip)

    def prepare(self, entries: list[MaildropEntry], n: int, skip: set[int]) -> None:
        if self.cold or n in self.held:
            return
        reply = self.maildrop.cached_reply(entries[n - 1])
        if reply is not None:
            self.held[n] = reply
        elif self.reading is None:
            # Not in the page cache: a worker reads it while the client is still busy with this
            # reply, rather than once it asks. Only this one: a body or two evicted here and
            # there is the usual case, and the next RETR probes the cache again (read_on); a
            # mailbox cold throughout opens the window there, batch after batch.
            self.cold = True
            self.read_in_background(entries, [n])

    async def take(self, entries: list[MaildropEntry], n: int, skip: set[int]) -> bytes | None:
        """The whole RETR reply for message `n`, or None when it is too large to hold (stream it instead).

        `entries` is the session's listing and `skip` the numbers not to read ahead (deleted).
        """
        entry = entries[n - 1]
        in_order, self.expected = n == self.expected, n + 1
        self.cold = True  # not in the page cache (or not a local file): workers read ahead
        if entry.size > WHOLE_READ:  # the listed size is as sent, never less than as stored
            self.forget()
            return None
        reply = self.held.pop(n, None)
        if reply is None and n in self.reading_numbers:
            reading = self.reading
            with contextlib.suppress(Exception):  # logged by _read_done; the miss below reads it again
                await reading
            self.absorb(reading)
            reply = self.held.pop(n, None)
        if reply is None:
            self.forget()
            self.window = min(self.window * 2, READ_AHEAD_COUNT) if in_order else 1
            numbers = self.plan(entries, n, skip, READ_AHEAD_OCTETS // 2)
            replies = await self.maildrop.replies([entries[m - 1] for m in numbers])
            self.held = {m: b for m, b in zip(numbers[1:], replies[1:], strict=True) if b is not None}
            reply = replies[0]
        if in_order:
            self.read_on(entries, n, skip)
        return reply

    def read_on(self, entries: list[MaildropEntry], n: int, skip: set[int]) -> None:
        """Once half of what is held is sent, read the next batch in the background (window doubled)."""
        if self.reading is not None or len(self.held) > self.window // 2:
            return
        self.window = min(self.window * 2, READ_AHEAD_COUNT)
        numbers = self.plan(entries, max(self.held, default=n) + 1, skip, READ_AHEAD_OCTETS // 2)
        if numbers and (reply := self.maildrop.cached_reply(entries[numbers[0] - 1])) is not None:
            # The page cache has caught up (the disk read ahead too): back to reading here.
            self.held[numbers[0]] = reply
            self.cold = False
        else:
            self.read_in_background(entries, numbers)

    def read_in_background(self, entries: list[MaildropEntry], numbers: list[int]) -> None:
        if numbers:
            self.reading_numbers = numbers
            self.reading = asyncio.ensure_future(self.maildrop.replies([entries[m - 1] for m in numbers], asked=False))
            _READS_IN_FLIGHT.add(self.reading)
            self.reading.add_done_callback(_read_done)
            # Held as soon as read, so the RETR that asks for them finds them ready.
            self.reading.add_done_callback(self.absorb)

    def plan(self, entries: list[MaildropEntry], first: int, skip: set[int], octets: int) -> list[int]:
        """Message numbers from `first` on, within the window and `octets`; the first one always."""
        numbers: list[int] = []
        following = first
        while len(numbers) < self.window and following <= len(entries):
            if following not in skip:
                size = entries[following - 1].size
                if size > WHOLE_READ or (numbers and size > octets):
                    break
                numbers.append(following)
                octets -= size
            following += 1
        return numbers

    def absorb(self, reading: asyncio.Task) -> None:
        """A batch read in the background joins the replies held, unless it was dropped meanwhile."""
        if reading is not self.reading:
            return
        numbers = self.reading_numbers
        self.reading, self.reading_numbers = None, []
        if reading.cancelled() or reading.exception() is not None:
            return  # each of these messages is read again by its own RETR
        self.held.update((m, b) for m, b in zip(numbers, reading.result(), strict=True) if b is not None)

    def forget(self) -> None:
        """Drop what is held; a batch still being read finishes in its thread, unused."""
        self.held.clear()
        self.reading, self.reading_numbers = None, []
