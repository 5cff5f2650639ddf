"""What the POP3 protocol needs from storage, and the one sync_to_async boundary into the services."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Protocol

from asgiref.sync import sync_to_async

from mailcore.services import maildrop as service
from mailcore.services.login_failures import LoginFailures
from mailcore.services.maildrop import Account, LockLost, MaildropEntry

__all__ = ["Account", "LockLost", "Maildrop", "MaildropEntry", "ServiceMaildrop"]


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

    async def update(self, account: Account, holder: str, deleted: list[int], retrieved: list[int]) -> int:
        return await _off_loop(service.commit_update, account.mailbox_id, holder, deleted, retrieved)
