"""What the POP3 protocol needs from storage, and the one sync_to_async boundary into the services."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Protocol

from asgiref.sync import sync_to_async

from mailcore.services import maildrop as service
from mailcore.services.login_failures import LoginFailures
from mailcore.services.maildrop import Account, LockLost, MaildropEntry

__all__ = ["Account", "LockLost", "Maildrop", "MaildropEntry", "ReadAhead", "ServiceMaildrop"]


class Maildrop(Protocol):
    """The storage side of a POP3 session; the protocol holds one and never a database handle."""

    async def authenticate(self, address: str, password: str) -> Account | None: ...

    async def login_blocked(self, client: str) -> bool: ...

    async def record_login_failure(self, client: str) -> None: ...

    async def lock(self, account: Account, holder: str) -> bool: ...

    async def refresh(self, account: Account, holder: str) -> bool: ...

    async def unlock(self, account: Account, holder: str) -> None: ...

    async def listing(self, account: Account) -> list[MaildropEntry]: ...

    def body(self, entry: MaildropEntry) -> AsyncIterator[bytes]: ...

    async def bodies(self, entries: list[MaildropEntry]) -> list[bytes | None]: ...

    async def update(self, account: Account, holder: str, deleted: list[int], retrieved: list[int]) -> int: ...


async def _off_loop(func, *args):
    # thread_sensitive=False: the password hasher and body reads run in a pool, so one slow
    # login or a large RETR does not queue every other session behind it on a single thread.
    return await sync_to_async(functools.partial(func, *args), thread_sensitive=False)()


_EXHAUSTED = object()

# What RETR reads in one go (memory per session in flight stays within a few times this); a
# larger body is streamed in the store's chunks.
WHOLE_READ = 256 * 1024


def _next_chunk(chunks):
    return next(chunks, _EXHAUSTED)


class ServiceMaildrop:
    """The Maildrop over `mailcore.services.maildrop`: every call runs off the event loop."""

    def __init__(self, lock_ttl: float, failures: LoginFailures):
        self.lock_ttl = lock_ttl
        self.failures = failures

    async def authenticate(self, address: str, password: str) -> Account | None:
        return await _off_loop(service.authenticate, address, password)

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

    async def bodies(self, entries: list[MaildropEntry]) -> list[bytes | None]:
        return await _off_loop(service.read_bodies, [entry.body_ref for entry in entries])

    async def update(self, account: Account, holder: str, deleted: list[int], retrieved: list[int]) -> int:
        return await _off_loop(service.commit_update, account.mailbox_id, holder, deleted, retrieved)


# RETR's read-ahead: at most this many octets of bodies held per session, and at most this many
# bodies read in one trip to a worker thread.
READ_AHEAD_OCTETS = 256 * 1024
READ_AHEAD_COUNT = 64


class ReadAhead:
    """Small bodies a session is likely to RETR next, read several in one trip to a worker thread.

    Mail clients retrieve in order, one RETR at a time (RFC 1939 has no bulk retrieval), and a
    trip to a worker thread costs more than sending a 10 KB body. Like a file system's
    read-ahead, the window starts at one message and doubles each time the client asks for the
    message after the last one it asked for, up to READ_AHEAD_OCTETS and READ_AHEAD_COUNT; any
    other request starts again at one, so a client that picks messages here and there makes
    the same one trip per RETR as without read-ahead. Bodies are immutable once stored and the
    session holds the maildrop's lock (RFC 1939 §8), so a body read ahead is the body.
    """

    def __init__(self, maildrop: Maildrop):
        self.maildrop = maildrop
        self.bodies: dict[int, bytes] = {}
        self.window = 1
        self.expected = 0  # the message number that would continue the client's run

    async def take(self, entries: list[MaildropEntry], n: int, skip: set[int]) -> bytes | None:
        """The stored body of message `n`, or None when it is too large to hold (stream it instead).

        `entries` is the session's listing and `skip` the numbers not to read ahead (deleted).
        """
        entry = entries[n - 1]
        in_order, self.expected = n == self.expected, n + 1
        if entry.size > WHOLE_READ:  # the listed size is as sent, never less than as stored
            self.bodies.clear()
            return None
        body = self.bodies.pop(n, None)
        if body is not None:
            return body
        self.bodies.clear()
        self.window = min(self.window * 2, READ_AHEAD_COUNT) if in_order else 1
        numbers, octets = [n], entry.size
        following = n + 1
        while len(numbers) < self.window and following <= len(entries):
            if following not in skip:
                size = entries[following - 1].size
                if size > WHOLE_READ or octets + size > READ_AHEAD_OCTETS:
                    break
                numbers.append(following)
                octets += size
            following += 1
        bodies = await self.maildrop.bodies([entries[m - 1] for m in numbers])
        self.bodies = {m: b for m, b in zip(numbers[1:], bodies[1:], strict=True) if b is not None}
        return bodies[0]
